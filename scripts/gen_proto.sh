#!/usr/bin/env bash
# Regenerate the Python modules for splitfed/transport/splitfed.proto (needs grpcio-tools, a dev extra).
#   scripts/gen_proto.sh            write splitfed/transport/splitfed_pb2{.py,.pyi,_grpc.py} in place
#   scripts/gen_proto.sh OUT_DIR    write them under OUT_DIR/splitfed/transport/ instead (freshness test)
# PYTHON overrides the interpreter (default: the repo's .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out="$(mkdir -p "${1:-$root}" && cd "${1:-$root}" && pwd)"
proto="splitfed/transport/splitfed.proto"
cd "$root"
# Compiling from the repo root makes the generated grpc module import the messages package-absolutely
# ("from splitfed.transport import splitfed_pb2"), so no manual import fixing is needed.
"$python" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "$proto"
gen="$out/splitfed/transport"
grep -q '^from splitfed.transport import splitfed_pb2 as ' "$gen/splitfed_pb2_grpc.py" \
    || { echo "gen_proto.sh: unexpected import in splitfed_pb2_grpc.py" >&2; exit 1; }
for file in "$gen/splitfed_pb2.py" "$gen/splitfed_pb2.pyi" "$gen/splitfed_pb2_grpc.py"; do
    { echo "# ruff: noqa"; cat "$file"; } > "$file.tmp" && mv "$file.tmp" "$file"
done
