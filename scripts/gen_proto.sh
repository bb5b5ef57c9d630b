#!/usr/bin/env bash
# Generates lightmesh/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py from proto/ into OUT (default: the repo).
# The committed output is checked by tests/unit/test_generated_code.py, which regenerates into a
# temporary directory and compares.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here}
py=${PYTHON:-python}
mkdir -p "$out/lightmesh/v1"
"$py" -m grpc_tools.protoc -I "$here/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here"/proto/lightmesh/v1/*.proto
# config.proto declares no service: its empty _grpc module is noise.
rm -f "$out/lightmesh/v1/config_pb2_grpc.py"
