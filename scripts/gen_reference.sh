#!/usr/bin/env bash
# Regenerate what is generated from the code and kept in the repository (a test fails when stale):
#   splitfed/cli/settings_fields.json   the settings' fields as the commands' --help shows them
#   docs/reference/cli.md, config.md    the command-line and configuration references
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
"$python" -c "from splitfed.cli.options import main; main()"
"$python" -c "
from pathlib import Path
from splitfed.cli.reference import write_references
for path in write_references(Path('docs/reference')):
    print('wrote', path)
"
