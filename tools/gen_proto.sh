#!/usr/bin/env bash
# Regenerates pymap_admin/grpc from proto/admin.proto.
#
# protoc comes from grpcio-tools 1.59 (protoc 24, $PROTOC_PYTHON's
# environment, made by `make protoc-venv`): its Python code has no runtime
# version check and runs on protobuf 4.25 (what pymap[admin] 0.36.7 pins)
# through 7.x, so pymap-deliver can share pymap's environment. A newer protoc
# writes code that refuses a runtime older than itself.
# The plugins (mypy-protobuf, grpclib) come from the project's environment.
#
# The proto path maps proto/ to pymap_admin/grpc so the generated modules
# import each other as pymap_admin.grpc.*, with no post-processing.
# Usage: tools/gen_proto.sh [OUTPUT_ROOT]   (default: the repository root)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here}
py=${PYTHON:-$here/.venv/bin/python}
protoc_py=${PROTOC_PYTHON:-$here/.venv-protoc/bin/python}
bindir=$(dirname "$py")
mkdir -p "$out/pymap_admin/grpc"
cd "$here"
PATH="$bindir:$PATH" "$protoc_py" -m grpc_tools.protoc \
    --proto_path=pymap_admin/grpc=proto \
    --python_out="$out" \
    --mypy_out="$out" \
    --grpclib_python_out="$out" \
    pymap_admin/grpc/admin.proto
