#!/usr/bin/env bash
# Builds the gRPC fixture (fixtures/grpc) against several google.golang.org/grpc versions, plain
# and stripped (-s -w), into target/fixtures/grpc/grpc-vX.Y.Z[-stripped]. The versions sit at the
# boundaries where the functions or structs gotel reads change (fixtures/grpc/RESEARCH.md); pass
# versions as arguments to build others. Each version is copied into a temporary module, pinned
# with go mod edit, tidied with the newest toolchain (which picks the google.golang.org/protobuf
# and golang.org/x/net that grpc version asks for), then built with the oldest installed toolchain
# that version's go.mod allows: the Go an application of that era was built with. Set
# GOTEL_GRPC_GOROOT to build every version with one toolchain instead. A binary newer than every
# fixture source (*.go, go.mod, go.sum) is not rebuilt. Needs the Go module proxy the first time.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src=$repo/fixtures/grpc
out=${GOTEL_FIXTURES_DIR:-$repo/target/fixtures}/grpc
mkdir -p "$out"

versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
  versions=(
    v1.40.0 # oldest supported
    v1.58.3 # last with processUnaryRPC(t, stream, ...) and handleStream(t, stream, trInfo)
    v1.59.0 # processUnaryRPC/processStreamingRPC gain ctx; handleStream loses trInfo
    v1.60.1 # operateHeaders gains ctx; http2Server.remoteAddr -> peer
    v1.66.2 # Stream.ct becomes the ClientTransport interface
    v1.68.1 # last with one transport.Stream and (*http2Server).WriteStatus
    v1.69.0 # ServerStream/ClientStream embed *Stream; WriteStatus -> writeStatus
    v1.70.0
    v1.71.0 # csAttempt.s -> transportStream
    v1.76.0 # last with *Stream embedded by pointer
    v1.77.0 # Stream embedded by value; fields reordered
    v1.80.0
    v1.83.2 # last with processUnaryRPC/processStreamingRPC
    v1.84.0 # one (*Server).processRPC for unary and streaming
    v1.85.0 # newest
  )
fi

# Go toolchains, one per Go minor version, oldest first (as build-fixtures.sh finds them).
declare -A seen
toolchains=()
for dir in /usr/lib/go-1.* /usr/local/go; do
  [ -x "$dir/bin/go" ] || continue
  short=$("$dir/bin/go" env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
  [ -n "${seen[$short]:-}" ] && continue
  seen[$short]=$dir
done
[ ${#seen[@]} -gt 0 ] || { echo "[grpc-fixtures] no Go toolchain found" >&2; exit 1; }
for short in $(printf '%s\n' "${!seen[@]}" | sort -t. -k1,1n -k2,2n); do
  toolchains+=("${seen[$short]}")
done
newest=${toolchains[-1]}

# go with toolchain root $1, in the module directory $2, then go's arguments.
gorun() {
  local root=$1 dir=$2; shift 2
  (cd "$dir" && GOTOOLCHAIN=local CGO_ENABLED=0 GOROOT="$root" GOFLAGS=-mod=mod "$root/bin/go" "$@")
}

# The minor version of a go.mod's go line ("go 1.22.0" -> 22).
go_minor() { sed -nE 's/^go 1\.([0-9]+).*/\1/p' "$1"; }

# The oldest toolchain whose Go minor version is at least $1.
toolchain_for() {
  local want=$1 root minor
  for root in "${toolchains[@]}"; do
    minor=$("$root/bin/go" env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
    if [ "$minor" -ge "$want" ]; then echo "$root"; return 0; fi
  done
  return 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
built=()
for v in "${versions[@]}"; do
  bin=$out/grpc-$v
  built+=("grpc-$v")
  if [ -x "$bin" ] && [ -x "$bin-stripped" ] &&
    [ -z "$(find "$src" -newer "$bin" -type f \( -name '*.go' -o -name 'go.*' \))" ]; then
    continue
  fi
  mod=$work/$v
  mkdir -p "$mod"
  cp "$src"/go.mod "$src"/go.sum "$src"/*.go "$mod"/
  rm -f "$mod"/*_test.go
  gorun "$newest" "$mod" mod edit -require="google.golang.org/grpc@$v"
  gorun "$newest" "$mod" mod tidy
  if [ -n "${GOTEL_GRPC_GOROOT:-}" ]; then
    root=$GOTEL_GRPC_GOROOT
  else
    root=$(toolchain_for "$(go_minor "$mod/go.mod")") || {
      echo "[grpc-fixtures] grpc $v needs $(grep -m1 '^go ' "$mod/go.mod"): no such toolchain" >&2
      exit 1
    }
  fi
  pb=$(awk '$1 == "google.golang.org/protobuf" { print $2 }' "$mod/go.mod")
  echo "[grpc-fixtures] grpc $v (protobuf $pb) with $("$root/bin/go" env GOVERSION)"
  gorun "$root" "$mod" build -trimpath -o "$bin.tmp" .
  gorun "$root" "$mod" build -trimpath -ldflags="-s -w" -o "$bin-stripped" .
  mv "$bin.tmp" "$bin" # last, so an interrupted build is not taken as up to date
done
echo "[grpc-fixtures] ready in $out: ${built[*]}"
