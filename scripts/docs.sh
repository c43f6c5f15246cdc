#!/usr/bin/env bash
# Build the documentation site into site/ (strict: a broken link or reference fails);
# `scripts/docs.sh serve` serves it at http://127.0.0.1:8000 and rebuilds on change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
export NO_MKDOCS_2_WARNING=1  # the theme's end-of-life notice, printed on every build
if [ "${1:-build}" = "serve" ]; then
  shift
  exec .venv/bin/mkdocs serve "$@"
fi
[ "${1:-}" = "build" ] && shift
exec .venv/bin/mkdocs build --strict "$@"
