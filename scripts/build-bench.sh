#!/usr/bin/env bash
# Builds what scripts/bench-http.py compares and drives, besides gotel and the fixtures:
# the benchmark service instrumented by hand with the OpenTelemetry Go SDK (bench/sdkchain,
# modules pinned in its go.mod), the db workload's service (bench/dbservice, likewise),
# OpenTelemetry's Go auto-instrumentation agent (scripts/build-otel-auto.sh) and the oha load
# generator (crates.io, pinned).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
OHA_VERSION=1.16.0
mkdir -p "$repo/target/bench"
echo "[bench] building bench/sdkchain (OpenTelemetry Go SDK)"
(cd "$repo/bench/sdkchain" && CGO_ENABLED=0 go build -trimpath -mod=readonly -o "$repo/target/bench/sdkchain" .)
echo "[bench] building bench/dbservice (the db workload; -sdk: otelhttp, otelsql, redisotel)"
(cd "$repo/bench/dbservice" && CGO_ENABLED=0 go build -trimpath -mod=readonly -o "$repo/target/bench/dbservice" .)
"$repo/scripts/build-otel-auto.sh"
oha="$repo/target/tools/oha/bin/oha"
if [ "$("$oha" --version 2>/dev/null)" = "oha $OHA_VERSION" ]; then
  echo "[bench] oha $OHA_VERSION: up to date"
else
  echo "[bench] installing oha $OHA_VERSION from crates.io (a few minutes)"
  cargo install oha --version "$OHA_VERSION" --locked --root "$repo/target/tools/oha" --quiet
fi
