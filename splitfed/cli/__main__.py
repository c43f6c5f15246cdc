"""``python -m splitfed.cli``: the ``splitfed`` command."""

from splitfed.cli import app

app(prog_name="splitfed")
