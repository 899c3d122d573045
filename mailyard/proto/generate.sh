#!/bin/sh
# Regenerates the Python modules from the .proto files (needs grpcio-tools).
# tests/unit/test_proto_generated.py fails when the committed modules are stale.
set -e
cd "$(dirname "$0")/../.."
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
    mailyard/proto/events.proto mailyard/proto/mailbox.proto
