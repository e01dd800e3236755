#!/usr/bin/env bash
# Usage: pin-module.sh DIR GOROOT MODULE VERSION
# Pins MODULE at VERSION in the Go module in DIR and tidies it with the Go at GOROOT, for the
# fixture build scripts. The fixture's indirect requirements are those of the version its go.mod
# names; for any other version they are dropped first, so that version brings its own (a newer
# grpc-go needs the split genproto modules, which the old monolithic genproto would shadow).
# Fails if the dependencies raise MODULE above VERSION: the fixture would not be that version.
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 DIR GOROOT MODULE VERSION" >&2; exit 2; }
dir=$1 root=$2 module=$3 version=$4
gomod() { (cd "$dir" && GOTOOLCHAIN=local GOROOT="$root" GOFLAGS=-mod=mod "$root/bin/go" "$@"); }
version_of() { gomod list -m -f '{{.Version}}' "$module"; }

if [ "$(version_of)" != "$version" ]; then
  sed -nE 's#^(require)?[[:space:]]*([^[:space:]()]+)[[:space:]]+v[^[:space:]]+[[:space:]]+// indirect$#\2#p' \
    "$dir/go.mod" | while read -r dep; do gomod mod edit -droprequire="$dep"; done
fi
gomod mod edit -require="$module@$version"
gomod mod tidy
got=$(version_of)
[ "$got" = "$version" ] || {
  echo "[fixtures] asked for $module $version, the dependencies raised it to $got" >&2
  exit 1
}
