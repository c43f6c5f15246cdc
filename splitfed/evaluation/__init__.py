"""Federated vs centralized evaluation on any task: ``splitfed eval`` and ``benchmarks/quality.py``."""

from splitfed.evaluation.methods import MethodResult, noise_skip_reason
from splitfed.evaluation.report import comparisons, markdown_report, markdown_table, plot_losses
from splitfed.evaluation.run import EvalResult, run_eval, save_result
from splitfed.evaluation.settings import METHODS, EvalSettings

__all__ = ["METHODS", "EvalResult", "EvalSettings", "MethodResult", "markdown_report", "markdown_table",
           "noise_skip_reason", "plot_losses", "run_eval", "save_result", "comparisons"]
