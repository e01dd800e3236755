#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need (system packages, Go
# toolchains, the pinned OpenTelemetry Collector), builds the Go fixtures, then runs format and
# lint checks and every test. End-to-end tests attach real uprobes, so run this as root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"

step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }

step "system packages and Go toolchains"
bash scripts/setup.sh
step "Go fixtures (every installed toolchain, plain and stripped)"
bash scripts/build-fixtures.sh
step "gRPC fixtures (grpc-go versions at each layout change gotel reads, plain and stripped)"
bash scripts/build-grpc-fixtures.sh v1.14.0 v1.16.0 v1.17.0 v1.24.0 v1.25.0 v1.28.0 v1.29.0 v1.31.1 \
  v1.32.0 v1.39.1 v1.40.0 v1.59.0 v1.60.1 v1.66.2 v1.68.1 v1.69.0 v1.71.0 v1.76.0 v1.77.0 \
  v1.85.0
step "gRPC as a distribution builds it (GOPATH mode, no modules in buildinfo, stripped)"
bash scripts/build-gopath-fixture.sh grpc google.golang.org/grpc v1.60.1
# Debian 12's grpc-go with its Go 1.19, as Debian builds it and vendored in the project
bash scripts/build-gopath-fixture.sh grpc google.golang.org/grpc v1.33.3 /usr/lib/go-1.19
bash scripts/build-gopath-fixture.sh --vendor grpc google.golang.org/grpc v1.33.3 /usr/lib/go-1.19
step "database/sql driver fixtures (each driver's oldest and newest supported release)"
bash scripts/build-module-fixtures.sh dbsql github.com/lib/pq v1.10.0 v1.12.3
bash scripts/build-module-fixtures.sh dbsql github.com/jackc/pgx/v5 v5.0.0 v5.13.0
bash scripts/build-module-fixtures.sh dbsql github.com/go-sql-driver/mysql v1.5.0 v1.10.1
step "go-redis fixtures (the oldest and newest v9, the oldest v8.11, plain and stripped)"
bash scripts/build-module-fixtures.sh redis github.com/redis/go-redis/v9 v9.0.0 v9.23.0
bash scripts/build-module-fixtures.sh redis github.com/go-redis/redis/v8 v8.11.0
# As a distribution builds it: no modules in buildinfo, versions told by the struct layouts
bash scripts/build-gopath-fixture.sh redis github.com/redis/go-redis/v9 v9.7.3
step "router fixtures (each router's oldest supported release, each layout's first, the newest)"
bash scripts/build-module-fixtures.sh gin github.com/gin-gonic/gin v1.7.7 v1.12.0
bash scripts/build-module-fixtures.sh gorilla github.com/gorilla/mux v1.6.2 v1.7.0 v1.8.1
bash scripts/build-module-fixtures.sh chi github.com/go-chi/chi/v5 v5.0.0 v5.0.8 v5.5.0
bash scripts/build-module-fixtures.sh echo github.com/labstack/echo/v4 v4.0.0 v4.16.5
step "golang.org/x/net/http2 client fixtures (the oldest and newest tagged release; the newest on Go 1.27 wraps net/http's)"
bash scripts/build-module-fixtures.sh xnet golang.org/x/net v0.1.0 v0.63.0 v0.63.0+go1.27
step "OpenTelemetry Collector (pinned, from the Go module proxy)"
bash scripts/build-collector.sh
step "interop server's Python libraries (pinned, from PyPI)"
bash scripts/build-interop.sh
step "deployment files (Kubernetes manifest, Helm chart, systemd unit)"
bash scripts/validate-deploy.sh
step "format and lint"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
step "fuzzing, a short pass of each target from its committed corpus (scripts/fuzz.sh)"
bash scripts/fuzz.sh --seconds 10
step "tests"
if [ "$(id -u)" != 0 ]; then
  echo "!!! not root: end-to-end tests will be SKIPPED (they need to attach uprobes) !!!"
fi
cargo test --workspace --locked
step "soak, short mode: 20 traced processes under churn and two collector outages (scripts/soak.sh)"
bash scripts/soak.sh --minutes 2 --gotel target/debug/gotel
