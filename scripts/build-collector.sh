#!/usr/bin/env bash
# Builds the tiny OpenTelemetry Collector used by gotel's end-to-end tests
# (OTLP receiver grpc+http -> file exporter, plus debug exporter) from
# tools/otelcol, pinned to collector v0.161.0 / v1.67.0 and contrib v0.161.0.
#
# Output: ${GOTEL_TOOLS_DIR:-<repo>/target/tools}/otelcol-gotel
# Skips the build when the binary is newer than go.mod, go.sum and main.go.
# Needs Go >= 1.26 (go.mod says `go 1.26.0`) and the Go module proxy.
set -euo pipefail

log() { printf '[collector] %s\n' "$*"; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/tools/otelcol"
out_dir="${GOTEL_TOOLS_DIR:-$repo/target/tools}"
bin="$out_dir/otelcol-gotel"

# Pick a Go toolchain: $GO if set, else `go` on PATH if it is >= 1.26,
# else /usr/local/go/bin/go.
go_ok() { # $1 = go binary; true if it reports go1.26 or newer
  local v
  v="$("$1" env GOVERSION 2>/dev/null)" || return 1
  v="${v#go}"
  local major="${v%%.*}" rest="${v#*.}"
  local minor="${rest%%[^0-9]*}"
  [ "${major:-0}" -gt 1 ] || { [ "${major:-0}" -eq 1 ] && [ "${minor:-0}" -ge 26 ]; }
}
if [ -n "${GO:-}" ]; then
  gobin="$GO"
elif command -v go >/dev/null 2>&1 && go_ok "$(command -v go)"; then
  gobin="$(command -v go)"
elif [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
  gobin=/usr/local/go/bin/go
elif command -v go >/dev/null 2>&1; then
  gobin="$(command -v go)" # too old; GOTOOLCHAIN=auto may still fetch go1.26
else
  echo "[collector] error: no go toolchain found (looked on PATH and /usr/local/go/bin)" >&2
  exit 1
fi

if [ -x "$bin" ] && [ "$bin" -nt "$src/go.mod" ] && [ "$bin" -nt "$src/go.sum" ] && [ "$bin" -nt "$src/main.go" ]; then
  log "up to date: $bin"
  exit 0
fi

mkdir -p "$out_dir"
log "building $bin with $("$gobin" env GOVERSION) (first build takes a few minutes) ..."
start=$SECONDS
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$src" && CGO_ENABLED="${CGO_ENABLED:-0}" "$gobin" build -trimpath -mod=readonly -o "$tmp" .)
mv -f "$tmp" "$bin"
log "built $bin in $((SECONDS - start))s"
