#!/usr/bin/env bash
# Builds every Go fixture with every Go toolchain found, into target/fixtures/NAME-goX.Y.
# A toolchain that is missing is reported and skipped here; tests say what they need.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${GOTEL_FIXTURES_DIR:-$repo/target/fixtures}
mkdir -p "$out"

toolchains=()
for dir in /usr/lib/go-1.* /usr/local/go; do
  [ -x "$dir/bin/go" ] && toolchains+=("$dir")
done

for fixture in "$repo"/fixtures/*/; do
  name=$(basename "$fixture")
  for root in "${toolchains[@]}"; do
    ver=$("$root/bin/go" env GOVERSION)            # go1.22.12
    short=$(echo "$ver" | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
    bin="$out/$name-go$short"
    if [ -x "$bin" ] && [ -z "$(find "$fixture" -newer "$bin" -type f)" ]; then
      continue
    fi
    echo "[fixtures] $name with $ver"
    (cd "$fixture" && GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 GOROOT="$root" \
      "$root/bin/go" build -trimpath -o "$bin" .)
    (cd "$fixture" && GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 GOROOT="$root" \
      "$root/bin/go" build -trimpath -ldflags="-s -w" -o "$bin-stripped" .)
  done
done
echo "[fixtures] ready in $out: $(ls "$out" | tr '\n' ' ')"
