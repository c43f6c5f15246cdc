"""The progress bars of long work (training, evaluation, a client process): one look everywhere."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console, label: str = "{task.description}") -> Progress:
    """Bars of ``label`` (bold), done / total, a status field (``status=``) and the time elapsed."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                    transient=False)
