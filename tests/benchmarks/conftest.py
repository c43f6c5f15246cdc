"""Run a benchmark script as its command line would, but inside the test process: the script's
``main`` runs under ``__main__`` with its arguments, so each run spares a Python start-up and the
imports of torch, transformers and peft (seconds each on two cores). Output, exit status and the
root logger's state are captured and restored, as a subprocess would keep them apart."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


@dataclass(frozen=True)
class Finished:
    """What ``subprocess.run(..., capture_output=True, text=True)`` would return."""

    returncode: int
    stdout: str
    stderr: str


def run_benchmark(name: str, *args: str) -> Finished:
    """``python benchmarks/NAME.py ARGS`` in this process."""
    path = BENCHMARKS / f"{name}.py"
    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
    returncode = 0
    with (mock.patch.object(sys, "argv", [str(path), *args]),
          mock.patch.object(sys, "path", [str(BENCHMARKS), *sys.path]),
          contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr)):
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exit_:
            if isinstance(exit_.code, str):  # as the interpreter does: the message on stderr, status 1
                print(exit_.code, file=sys.stderr)
                returncode = 1
            else:
                returncode = exit_.code or 0
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            torch.set_num_threads(threads)
    return Finished(returncode, stdout.getvalue(), stderr.getvalue())


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` as a module, its ``main`` not run."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    with mock.patch.object(sys, "path", [str(BENCHMARKS), *sys.path]):
        spec.loader.exec_module(module)
    return module
