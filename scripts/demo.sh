#!/usr/bin/env bash
# The demo: builds gotel and a bundled Go service, runs three copies of it as a small system
# (frontend -> orders -> inventory, the last called from two goroutines), instruments all of
# them with one `gotel attach --exe`, sends a few requests and shows the traces gotel printed.
# Needs root (uprobes). Set OTEL_EXPORTER_OTLP_ENDPOINT to send the spans to a collector.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"

if [ "$(id -u)" != 0 ]; then
  echo "demo: gotel attaches uprobes, which needs root: sudo $0" >&2
  exit 1
fi
say() { printf '\033[1;34m[demo]\033[0m %s\n' "$*"; }

bash scripts/setup.sh
say "building gotel (release; the first build takes a few minutes)"
cargo build --release -p gotel --locked
say "building the demo service with $(go version | cut -d' ' -f3), stripped (-s -w)"
mkdir -p target/demo
(cd fixtures/chain && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$repo/target/demo/shop" .)

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

say "gotel attach --exe target/demo/shop   (every process of that file, now and later)"
./target/release/gotel attach --exe target/demo/shop &
pids+=($!)
sleep 2

base=${DEMO_PORT:-18080}
start() { # name port [next-port]
  local next=""
  [ -n "${3:-}" ] && next="http://127.0.0.1:$3"
  OTEL_SERVICE_NAME=$1 ./target/demo/shop -addr "127.0.0.1:$2" ${next:+-next "$next"} 2>/dev/null &
  pids+=($!)
}
start inventory $((base + 2))
start orders $((base + 1)) $((base + 2))
start frontend "$base" $((base + 1))
for port in "$base" $((base + 1)) $((base + 2)); do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

request() {
  local path=$1 extra=${2:-}
  exec 3<>"/dev/tcp/127.0.0.1/$base"
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n%sConnection: close\r\n\r\n' "$path" "$base" "$extra" >&3
  local status
  status=$(head -1 <&3 | cut -d' ' -f2)
  exec 3<&-
  say "GET $path -> $status"
  sleep 1.5
}
request /a
request /a 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n'
request /c?from=curl

say "stopping"
cleanup
trap - EXIT
