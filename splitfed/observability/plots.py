"""Training-loss plots: one panel per task (or run), one curve per trainer, the same look everywhere
(the demo's ``losses.png``, ``splitfed eval``'s and the benchmarks')."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def moving_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_loss_panels(panels: Mapping[str, Mapping[str, Sequence[float]]], title: str, path: Path,
                     smooth: bool = False, dashed: frozenset[str] = frozenset(), dpi: int = 110) -> Path:
    """PNG with one panel per key of ``panels`` and one curve per trainer in it (training loss per
    optimizer step). ``smooth``: a moving mean over 1/12 of the steps (named in the panel's title);
    ``dashed``: trainers drawn dashed, to stay visible on top of an identical curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    figure, axes = plt.subplots(1, len(names), figsize=(max(7.0, 5.5 * len(names)), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        curves = {label: list(losses) for label, losses in panels[name].items() if losses}
        window = max(1, max((len(c) for c in curves.values()), default=1) // 12) if smooth else 1
        for label, losses in curves.items():
            axis.plot(range(1, len(losses) + 1), moving_mean(losses, window),
                      "--" if label in dashed else "-", label=label, alpha=0.85)
        axis.set_title(f"{name} (moving mean of {window} steps)" if smooth else name)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("training loss (answer tokens)")
        axis.grid(alpha=0.3)
        if curves:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
