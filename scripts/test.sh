#!/usr/bin/env bash
# Quick start, command 2: install if needed, then lint and run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check splitfed tests scripts $([ -d benchmarks ] && echo benchmarks)
exec .venv/bin/python -m pytest -q "$@"
