"""``python -m splitfed``: the same command as ``splitfed``."""

from splitfed.cli import app

if __name__ == "__main__":
    app(prog_name="splitfed")
