#!/usr/bin/env bash
# Builds what scripts/bench-http.py compares against: the benchmark service instrumented by
# hand with the OpenTelemetry Go SDK (bench/sdkchain, modules pinned in its go.mod).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH="/usr/local/go/bin:$PATH"
mkdir -p "$repo/target/bench"
echo "[bench] building bench/sdkchain (OpenTelemetry Go SDK)"
(cd "$repo/bench/sdkchain" && CGO_ENABLED=0 go build -trimpath -mod=readonly -o "$repo/target/bench/sdkchain" .)
