#!/usr/bin/env bash
# Usage: build-gopath-fixture.sh FIXTURE MODULE VERSION
# Builds fixtures/FIXTURE against MODULE at VERSION the way Linux distributions build Go
# software: in GOPATH mode (GO111MODULE=off), every dependency a package under GOPATH/src (here
# from `go mod vendor`), stripped. Its buildinfo then lists no modules at all. Output:
# target/fixtures/FIXTURE/FIXTURE-VERSION-gopath, rebuilt when a fixture source is newer.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 3 ] || { echo "usage: $0 FIXTURE MODULE VERSION" >&2; exit 2; }
fixture=$1 module=$2 version=$3
src=$repo/fixtures/$fixture
out=${GOTEL_FIXTURES_DIR:-$repo/target/fixtures}/$fixture
bin=$out/$fixture-$version-gopath
mkdir -p "$out"
if [ -x "$bin" ] && [ -z "$(find "$src" -newer "$bin" -type f \( -name '*.go' -o -name 'go.*' \))" ]; then
  echo "[gopath-fixture] up to date: $bin"
  exit 0
fi
root=/usr/local/go # the newest Go: GOPATH mode builds what the vendored code allows
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mod=$work/mod
mkdir -p "$mod"
cp "$src"/go.mod "$src"/go.sum "$src"/*.go "$mod"/
rm -f "$mod"/*_test.go
gomod() { (cd "$mod" && GOTOOLCHAIN=local GOROOT="$root" GOFLAGS=-mod=mod "$root/bin/go" "$@"); }
gomod mod edit -require="$module@$version"
gomod mod tidy
gomod mod vendor
gopath=$work/gopath
mkdir -p "$gopath/src/gotel.dev/$fixture"
cp "$mod"/*.go "$gopath/src/gotel.dev/$fixture/"
(cd "$mod/vendor" && find . -mindepth 1 -maxdepth 1 -type d -exec cp -r {} "$gopath/src/" \;)
echo "[gopath-fixture] $fixture with $module $version in GOPATH mode, $("$root/bin/go" env GOVERSION)"
(cd "$gopath/src/gotel.dev/$fixture" && GOPATH=$gopath GO111MODULE=off GOTOOLCHAIN=local \
  CGO_ENABLED=0 GOROOT="$root" GOFLAGS= "$root/bin/go" build -ldflags="-s -w" -o "$bin" .)
echo "[gopath-fixture] ready: $bin"
