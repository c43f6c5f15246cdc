"""Training metrics as CSV and TensorBoard events, and a PNG of the curves at the end of a run."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends one row per step to ``metrics.csv`` (the columns of the first row) and the same scalars
    to TensorBoard event files in ``directory`` (``tensorboard --logdir`` shows them)."""

    def __init__(self, directory: str | Path, tensorboard: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.directory / "metrics.csv"
        self._columns: list[str] | None = None
        if self.csv_path.is_file() and self.csv_path.stat().st_size:
            with self.csv_path.open() as handle:
                self._columns = next(csv.reader(handle), None)
        self._tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV only
                log.warning("tensorboard is not installed: metrics go to %s only", self.csv_path)
            else:
                self._tensorboard = SummaryWriter(str(self.directory / "tensorboard"))

    def log(self, step: int, **values: float) -> None:
        row = {"step": step, **values}
        if self._columns is None:
            self._columns = list(row)
            with self.csv_path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self._columns)
        with self.csv_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([row.get(column, "") for column in self._columns])
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """The columns of a ``metrics.csv`` (empty cells skipped)."""
    columns: dict[str, list[float]] = {}
    with Path(path).open() as handle:
        for row in csv.DictReader(handle):
            for name, value in row.items():
                if value not in ("", None):
                    columns.setdefault(name, []).append(float(value))
    return columns


def plot_metrics(csv_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """A PNG with one panel per metric of ``metrics.csv`` against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(csv_path).open() as handle:
        rows = list(csv.DictReader(handle))
    names = [n for n in (rows[0].keys() if rows else []) if n != "step"]
    figure, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names, strict=False):
        points = [(float(r["step"]), float(r[name])) for r in rows if r.get(name) not in ("", None)]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        axis.set_xlabel("step")
        axis.set_title(name)
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    png_path = Path(png_path)
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return png_path
