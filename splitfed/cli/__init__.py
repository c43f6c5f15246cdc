"""The ``splitfed`` command (``python -m splitfed`` and ``python -m splitfed.cli`` too).

``app`` holds the global options; each module registers its commands on it: ``run`` (demo, serve,
train, generate), ``measure`` (attack, status, eval) and ``setup`` (keygen, sealing-key, export,
models, config-reference, plan) and ``parts``. ``reference`` renders every command's options for the docs.
"""

import importlib

from splitfed.cli.app import app

for _module in ("run", "measure", "setup", "parts"):  # the order of ``splitfed --help``
    importlib.import_module(f"splitfed.cli.{_module}")

__all__ = ["app"]
