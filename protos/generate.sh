#!/usr/bin/env bash
# Regenerate the checked-in Python stubs from protos/adapterfleet/v1/*.proto.
# Usage: protos/generate.sh [OUT_DIR]   (default: protos/, i.e. in place; CI generates to a temp dir and diffs)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
py=${PYTHON:-python}
"$py" -m grpc_tools.protoc -I"$here" --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  "$here"/adapterfleet/v1/*.proto
# protoc emits absolute imports ("from adapterfleet.v1 import ..."), which resolve because
# protos/ is the package root of `adapterfleet` (see pyproject.toml).
touch "$out/adapterfleet/__init__.py" "$out/adapterfleet/v1/__init__.py"
