#!/usr/bin/env bash
# Usage: build-module-fixtures.sh FIXTURE MODULE VERSION...
# Builds fixtures/FIXTURE against each VERSION of MODULE, plain and stripped (-s -w), into
# target/fixtures/FIXTURE/FIXTURE-VERSION[-stripped]: the version matrix of a library gotel
# instruments. Each version is copied into a temporary module, pinned and tidied with the newest
# toolchain (scripts/pin-module.sh: that version brings the dependencies it asks for), then built
# with the oldest installed toolchain that version's go.mod allows: the Go an application of
# that era was built with. Set GOTEL_MODULE_GOROOT to build every version with one toolchain
# instead, or name a version VERSION+go1.NN to build it with that Go (into
# FIXTURE-VERSION+go1.NN). A binary newer than every fixture source (*.go, go.mod, go.sum) is
# not rebuilt.
# Needs the Go module proxy the first time. Several modules' matrices of one fixture share its
# directory, named by version alone: their versions must not coincide.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 3 ] || { echo "usage: $0 FIXTURE MODULE VERSION..." >&2; exit 2; }
fixture=$1 module=$2
shift 2
versions=("$@")
src=$repo/fixtures/$fixture
out=${GOTEL_FIXTURES_DIR:-$repo/target/fixtures}/$fixture
mkdir -p "$out"

# Go toolchains, one per Go minor version, oldest first (as build-fixtures.sh finds them).
declare -A seen
toolchains=()
for dir in /usr/lib/go-1.* /usr/local/go; do
  [ -x "$dir/bin/go" ] || continue
  short=$("$dir/bin/go" env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
  [ -n "${seen[$short]:-}" ] && continue
  seen[$short]=$dir
done
[ ${#seen[@]} -gt 0 ] || { echo "[$fixture-fixtures] no Go toolchain found" >&2; exit 1; }
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
for arg in "${versions[@]}"; do
  # VERSION+go1.NN: built with that Go instead, named so (a library that changes with Go).
  v=${arg%%+go*} with_go=
  [ "$v" != "$arg" ] && with_go=${arg#*+go1.}
  bin=$out/$fixture-$arg
  built+=("$fixture-$arg")
  if [ -x "$bin" ] && [ -x "$bin-stripped" ] &&
    [ -z "$(find "$src" -newer "$bin" -type f \( -name '*.go' -o -name 'go.*' \))" ]; then
    continue
  fi
  mod=$work/$arg
  mkdir -p "$mod"
  cp "$src"/go.mod "$src"/go.sum "$src"/*.go "$mod"/
  rm -f "$mod"/*_test.go
  bash "$repo/scripts/pin-module.sh" "$mod" "$newest" "$module" "$v"
  if [ -n "$with_go" ]; then
    root=$(toolchain_for "$with_go") || { echo "[$fixture-fixtures] no Go 1.$with_go" >&2; exit 1; }
  elif [ -n "${GOTEL_MODULE_GOROOT:-}" ]; then
    root=$GOTEL_MODULE_GOROOT
  else
    root=$(toolchain_for "$(go_minor "$mod/go.mod")") || {
      echo "[$fixture-fixtures] $module $v needs $(grep -m1 '^go ' "$mod/go.mod"): no such toolchain" >&2
      exit 1
    }
  fi
  echo "[$fixture-fixtures] $module $v with $("$root/bin/go" env GOVERSION)"
  gorun "$root" "$mod" build -trimpath -o "$bin.tmp" .
  gorun "$root" "$mod" build -trimpath -ldflags="-s -w" -o "$bin-stripped" .
  mv "$bin.tmp" "$bin" # last, so an interrupted build is not taken as up to date
done
echo "[$fixture-fixtures] ready in $out: ${built[*]}"
