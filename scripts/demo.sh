#!/usr/bin/env bash
# The demo: builds gotel and a bundled Go service, starts the service under `gotel run`, sends
# it a few requests and shows the spans gotel printed. Needs root (uprobes).
# Set OTEL_EXPORTER_OTLP_ENDPOINT to send the spans to a collector instead.
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
say "building the demo service with $(go version | cut -d' ' -f3)"
mkdir -p target/demo
(cd fixtures/httpserver && CGO_ENABLED=0 go build -trimpath -o "$repo/target/demo/shop" .)

port=${DEMO_PORT:-18080}
say "gotel run -- target/demo/shop -addr 127.0.0.1:$port"
OTEL_SERVICE_NAME=shop ./target/release/gotel run -- target/demo/shop -addr "127.0.0.1:$port" &
gotel_pid=$!
trap 'kill $gotel_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

request() {
  local path=$1
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
  local status
  status=$(head -1 <&3 | cut -d' ' -f2)
  exec 3<&-
  say "GET $path -> $status"
  sleep 0.2
}
sleep 0.5
request /hello
request "/users/42?fields=name"
request /slow?ms=120
request /status/503
request /no-such-page

sleep 1
say "stopping"
kill -TERM "$gotel_pid"
wait "$gotel_pid" || true
trap - EXIT
