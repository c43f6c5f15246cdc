#!/usr/bin/env bash
# Quick start, command 1: install if needed, then run the federation demo on the default model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/splitfed demo "$@"
