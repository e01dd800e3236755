#!/usr/bin/env bash
# Builds configuration 4 of the overhead benchmark: OpenTelemetry's own eBPF Go
# auto-instrumentation agent (go.opentelemetry.io/auto, pinned below), from the
# Go module proxy. The published module has no compiled BPF objects (bpf2go's
# *_bpfel.o are git-ignored upstream), so we regenerate them with the module's
# own `go generate` (cilium/ebpf bpf2go) using clang-19, as upstream's
# Dockerfile does, then build ./cli (upstream's otel-go-instrumentation).
#
# Output: <repo>/target/bench/otel-auto (+ otel-auto.version stamp).
# Skips the build when the binary exists and the stamp matches the version.
# Needs: Go >= the module's `go` directive (1.24), clang-19, llvm-strip-19,
# the Go module proxy. Work dir: ${OTEL_AUTO_WORK:-/tmp/otel-auto-build}.
set -euo pipefail

OTEL_AUTO_VERSION=v0.24.0   # go.opentelemetry.io/auto
OTEL_AUTO_SDK_VERSION=v1.2.1 # go.opentelemetry.io/auto/sdk (its `sdk` module set, versions.yaml)

log() { printf '[otel-auto] %s\n' "$*"; }
die() { printf '[otel-auto] error: %s\n' "$*" >&2; exit 1; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="$repo/target/bench"
bin="$out_dir/otel-auto"
stamp="$bin.version"
work="${OTEL_AUTO_WORK:-/tmp/otel-auto-build}"

if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$OTEL_AUTO_VERSION" ]; then
  log "up to date: $bin ($OTEL_AUTO_VERSION)"
  exit 0
fi

command -v clang-19 >/dev/null || die "clang-19 not found"
command -v llvm-strip-19 >/dev/null || die "llvm-strip-19 not found"

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"

# Go toolchains to try, in order of preference (upstream builds with Go 1.26).
candidates=(/usr/local/go/bin/go)
for d in $(ls -d /usr/lib/go-1.* 2>/dev/null | sort -t. -k2,2nr); do candidates+=("$d/bin/go"); done
if command -v go >/dev/null; then candidates+=("$(command -v go)"); fi
first_go=""
for g in "${candidates[@]}"; do [ -x "$g" ] && { first_go="$g"; break; }; done
[ -n "$first_go" ] || die "no Go toolchain found (/usr/local/go, /usr/lib/go-1.NN)"

mkdir -p "$work" "$out_dir"
# Any Go can fetch the module; it lands read-only in GOMODCACHE.
modjson() { (cd "$work" && "$first_go" mod download -json "$1"); }
moddir() { modjson "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }
log "downloading go.opentelemetry.io/auto@$OTEL_AUTO_VERSION from $GOPROXY"
auto_dir="$(moddir "go.opentelemetry.io/auto@$OTEL_AUTO_VERSION")"
sdk_dir="$(moddir "go.opentelemetry.io/auto/sdk@$OTEL_AUTO_SDK_VERSION")"
[ -d "$auto_dir" ] && [ -d "$sdk_dir" ] || die "module download failed"

# Pick the first toolchain that satisfies the module's `go` directive.
need="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$auto_dir/go.mod")"
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
gobin=""
for g in "${candidates[@]}"; do
  [ -x "$g" ] || continue
  v="$("$g" env GOVERSION 2>/dev/null)" || continue
  if version_ge "${v#go}" "$need"; then gobin="$g"; break; fi
done
[ -n "$gobin" ] || die "no installed Go satisfies go $need"
export PATH="$(dirname "$gobin"):$PATH" # `go run` inside go:generate uses this go
log "using $("$gobin" env GOVERSION) (module needs go $need), clang-19"

# Writable copy of the module. Upstream's go.mod replaces go.opentelemetry.io/auto/sdk
# with ./sdk, a nested module that the module zip leaves out: put the released one there.
src="$work/auto-$OTEL_AUTO_VERSION"
rm -rf "$src"
cp -r "$auto_dir" "$src"
cp -r "$sdk_dir" "$src/sdk"
chmod -R u+w "$src"

log "generating BPF objects (bpf2go, go generate ./internal/pkg/instrumentation/bpf/...)"
start=$SECONDS
(
  cd "$src"
  export BPF2GO_CC=clang-19 BPF2GO_STRIP=llvm-strip-19
  export BPF2GO_CFLAGS="-I$src/internal/include/libbpf -I$src/internal/include"
  nice -n 10 go generate ./internal/pkg/instrumentation/bpf/...
)
n="$(find "$src/internal/pkg/instrumentation/bpf" -name '*_x86_bpfel.o' | wc -l)"
[ "$n" -gt 0 ] || die "go generate produced no *_x86_bpfel.o"
log "generated $n amd64 BPF objects in $((SECONDS - start))s"

log "building $bin (./cli) ..."
start=$SECONDS
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$src" && nice -n 10 go build -trimpath -mod=readonly -o "$tmp" ./cli)
mv -f "$tmp" "$bin"
echo "$OTEL_AUTO_VERSION" >"$stamp"
log "built $bin ($OTEL_AUTO_VERSION) in $((SECONDS - start))s"
