#!/usr/bin/env bash
# Builds every Go fixture with every Go toolchain found (Debian's /usr/lib/go-1.NN and the
# machine's /usr/local/go), plain and stripped (-s -w), into target/fixtures/NAME-go1.NN[-stripped].
# The newest toolchain also builds httpserver-go1.NN-gopath in GOPATH mode (buildinfo with no
# modules), and chain-, dbsql- and redis-go1.NN-pie-stripped, position-independent (loaded at a
# random address).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${GOTEL_FIXTURES_DIR:-$repo/target/fixtures}
mkdir -p "$out"

# The toolchain at $1's Go version as 1.NN.
short_version() {
  "$1/bin/go" env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/'
}

# Whether binary $1 is missing or older than a file of fixture directory $2.
stale() {
  [ ! -x "$1" ] || [ -n "$(find "$2" -newer "$1" -type f)" ]
}

declare -A seen
toolchains=()
for dir in /usr/lib/go-1.* /usr/local/go; do
  [ -x "$dir/bin/go" ] || continue
  short=$(short_version "$dir")
  [ -n "${seen[$short]:-}" ] && continue   # one toolchain per Go version
  seen[$short]=$dir
  toolchains+=("$dir")
done
[ ${#toolchains[@]} -gt 0 ] || { echo "[fixtures] no Go toolchain found" >&2; exit 1; }

# go build with toolchain $1, in directory $2, then the rest of go build's arguments.
gobuild() {
  local root=$1 dir=$2; shift 2
  (cd "$dir" && GOTOOLCHAIN=local CGO_ENABLED=0 GOROOT="$root" GOFLAGS=-mod=mod \
    "$root/bin/go" build -trimpath "$@")
}

newest=""
for fixture in "$repo"/fixtures/*/; do
  name=$(basename "$fixture")
  # Fixtures that vary by library version, not Go version: scripts/build-grpc-fixtures.sh and
  # scripts/build-module-fixtures.sh build them.
  case $name in grpc | gin | gorilla | chi | echo | xnet) continue ;; esac
  [ -f "$fixture/go.mod" ] || continue # not a Go program (fixtures/interop)
  for root in "${toolchains[@]}"; do
    short=$(short_version "$root")
    newest=$root
    bin="$out/$name-go$short"
    if ! stale "$bin" "$fixture" && ! stale "$bin-stripped" "$fixture"; then
      continue
    fi
    echo "[fixtures] $name with $("$root/bin/go" env GOVERSION)"
    gobuild "$root" "$fixture" -o "$bin" .
    gobuild "$root" "$fixture" -ldflags="-s -w" -o "$bin-stripped" .
  done
  short=$(short_version "$newest")
  if [ "$name" = chain ] || [ "$name" = dbsql ] || [ "$name" = redis ]; then
    bin="$out/$name-go$short-pie-stripped"
    if stale "$bin" "$fixture"; then
      echo "[fixtures] $name as a stripped PIE with go$short"
      gobuild "$newest" "$fixture" -buildmode=pie -ldflags="-s -w" -o "$bin" .
    fi
  fi
  [ "$name" = httpserver ] || continue
  # GOPATH mode: no go.mod, so buildinfo names no module versions (like many distro builds).
  bin="$out/$name-go$short-gopath"
  if stale "$bin" "$fixture"; then
    echo "[fixtures] $name in GOPATH mode with go$short"
    gopath=$(mktemp -d)
    mkdir -p "$gopath/src/gotel.dev/$name"
    cp "$fixture"/*.go "$gopath/src/gotel.dev/$name/"
    (cd "$gopath/src/gotel.dev/$name" && GOPATH=$gopath GO111MODULE=off GOTOOLCHAIN=local \
      CGO_ENABLED=0 GOROOT="$newest" "$newest/bin/go" build -ldflags="-s -w" -o "$bin" .)
    rm -rf "$gopath"
  fi
done
echo "[fixtures] ready in $out: $(ls "$out" | tr '\n' ' ')"
