#!/usr/bin/env bash
# Regenerates pymap_admin/grpc from proto/admin.proto.
#
# The proto path maps proto/ to pymap_admin/grpc so the generated modules
# import each other as pymap_admin.grpc.*, with no post-processing.
# Usage: tools/gen_proto.sh [OUTPUT_ROOT]   (default: the repository root)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here}
py=${PYTHON:-$here/.venv/bin/python}
bindir=$(dirname "$py")
mkdir -p "$out/pymap_admin/grpc"
cd "$here"
PATH="$bindir:$PATH" "$py" -m grpc_tools.protoc \
    --proto_path=pymap_admin/grpc=proto \
    --python_out="$out" \
    --mypy_out="$out" \
    --grpclib_python_out="$out" \
    pymap_admin/grpc/admin.proto
