#!/usr/bin/env bash
# Builds the gRPC fixture (fixtures/grpc) against several google.golang.org/grpc versions, plain
# and stripped (-s -w), into target/fixtures/grpc/grpc-vX.Y.Z[-stripped]. The versions sit at the
# boundaries where the functions or structs gotel reads change (fixtures/grpc/RESEARCH.md); pass
# versions as arguments to build others. Each version is copied into a temporary module, pinned
# with go mod edit, tidied with the newest toolchain (which picks the google.golang.org/protobuf
# and golang.org/x/net that grpc version asks for), then built with the oldest installed toolchain
# that version's go.mod allows: the Go an application of that era was built with
# (scripts/build-module-fixtures.sh does the building).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
  versions=(
    v1.14.0 # oldest supported: TLS in a credentials.tlsConn value, status.Status, no Stream.ct
    v1.16.0 # last with the tlsConn value
    v1.17.0 # TLS in credentials/internal.syscallConn
    v1.24.0 # last without Stream.ct
    v1.25.0 # Stream.ct: the stream's transport
    v1.28.0 # last with status.Status in the public package
    v1.29.0 # internal/status.Status
    v1.31.1 # last with credentials/internal.syscallConn
    v1.32.0 # internal/credentials.syscallConn
    v1.39.1 # last before v1.40
    v1.40.0
    v1.58.3 # last with processUnaryRPC(t, stream, ...) and handleStream(t, stream, trInfo)
    v1.59.0 # processUnaryRPC/processStreamingRPC gain ctx; handleStream loses trInfo
    v1.60.1 # operateHeaders gains ctx; http2Server.remoteAddr -> peer
    v1.66.2 # Stream.ct becomes the ClientTransport interface
    v1.68.1 # last with one transport.Stream and (*http2Server).WriteStatus
    v1.69.0 # ServerStream/ClientStream embed *Stream; WriteStatus -> writeStatus
    v1.70.0
    v1.71.0 # csAttempt.s -> transportStream
    v1.76.0 # last with *Stream embedded by pointer
    v1.77.0 # Stream embedded by value; fields reordered
    v1.80.0
    v1.83.2 # last with processUnaryRPC/processStreamingRPC
    v1.84.0 # one (*Server).processRPC for unary and streaming
    v1.85.0 # newest
  )
fi

exec bash "$repo/scripts/build-module-fixtures.sh" grpc google.golang.org/grpc "${versions[@]}"
