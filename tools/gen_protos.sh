#!/usr/bin/env bash
# Regenerates the committed Python code and typed stubs from protos/.
# Usage: tools/gen_protos.sh [OUT_DIR]   (default gen/python)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gen/python}"
python="${PYTHON:-.venv/bin/python}"
mkdir -p "$out/forecast/v1"
"$python" -m grpc_tools.protoc -Iprotos \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  protos/forecast/v1/*.proto
touch "$out/forecast/__init__.py" "$out/forecast/v1/__init__.py"
