#!/usr/bin/env bash
# Usage: build-gopath-fixture.sh [--vendor] FIXTURE MODULE VERSION [GOROOT]
# Builds fixtures/FIXTURE against MODULE at VERSION the way Linux distributions build Go
# software: in GOPATH mode (GO111MODULE=off), every dependency a package under GOPATH/src (here
# from `go mod vendor`), stripped, with the Go at GOROOT (default: the newest; a distribution
# builds with its own, e.g. Debian 12's Go 1.19). Its buildinfo then lists no modules at all.
# With --vendor the dependencies sit in the project's own vendor directory instead, as projects
# vendored before modules: every vendored package's name then starts with the project's path
# ("gotel.dev/grpc/vendor/google.golang.org/grpc"). Output:
# target/fixtures/FIXTURE/FIXTURE-VERSION-gopath[-vendor], rebuilt when a fixture source is newer.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
vendor=
if [ "${1:-}" = --vendor ]; then vendor=-vendor; shift; fi
[ $# -eq 3 ] || [ $# -eq 4 ] || { echo "usage: $0 [--vendor] FIXTURE MODULE VERSION [GOROOT]" >&2; exit 2; }
fixture=$1 module=$2 version=$3 root=${4:-/usr/local/go}
src=$repo/fixtures/$fixture
out=${GOTEL_FIXTURES_DIR:-$repo/target/fixtures}/$fixture
bin=$out/$fixture-$version-gopath$vendor
mkdir -p "$out"
if [ -x "$bin" ] && [ -z "$(find "$src" -newer "$bin" -type f \( -name '*.go' -o -name 'go.*' \))" ]; then
  echo "[gopath-fixture] up to date: $bin"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mod=$work/mod
mkdir -p "$mod"
cp "$src"/go.mod "$src"/go.sum "$src"/*.go "$mod"/
rm -f "$mod"/*_test.go
gomod() { (cd "$mod" && GOTOOLCHAIN=local GOROOT="$root" GOFLAGS=-mod=mod "$root/bin/go" "$@"); }
bash "$repo/scripts/pin-module.sh" "$mod" "$root" "$module" "$version"
gomod mod vendor
gopath=$work/gopath
mkdir -p "$gopath/src/gotel.dev/$fixture"
cp "$mod"/*.go "$gopath/src/gotel.dev/$fixture/"
deps=$gopath/src
[ -n "$vendor" ] && deps=$gopath/src/gotel.dev/$fixture/vendor && mkdir -p "$deps"
(cd "$mod/vendor" && find . -mindepth 1 -maxdepth 1 -type d -exec cp -r {} "$deps/" \;)
echo "[gopath-fixture] $fixture with $module $version in GOPATH mode${vendor:+, vendored}, $("$root/bin/go" env GOVERSION)"
(cd "$gopath/src/gotel.dev/$fixture" && GOPATH=$gopath GO111MODULE=off GOTOOLCHAIN=local \
  CGO_ENABLED=0 GOROOT="$root" GOFLAGS= "$root/bin/go" build -ldflags="-s -w" -o "$bin" .)
echo "[gopath-fixture] ready: $bin"
