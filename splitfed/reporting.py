"""Tables and plots of a run's results."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from splitfed.demo import DemoResult, Evaluation, TrainerResult
from splitfed.observability.plots import plot_loss_panels


def _rows(result: DemoResult) -> list[tuple[str, ...]]:
    before = result.federated.before
    rows = [("zero-shot (before)", f"{before.loss:.3f}", _accuracy(before), f"{before.macro_f1:.3f}",
             "-", "-")]
    for trainer in (result.federated, result.centralized):
        after = trainer.after
        rows.append((f"{trainer.name} (after)", f"{after.loss:.3f}", _accuracy(after),
                     f"{after.macro_f1:.3f}", _train_loss(trainer), f"{trainer.seconds:.0f}s"))
    return rows


def _accuracy(evaluation: Evaluation) -> str:
    """Accuracy with the count it comes from: on 56 examples one example is 1.8 points."""
    correct = round(evaluation.accuracy * evaluation.n)
    return f"{evaluation.accuracy:.3f} ({correct}/{evaluation.n})"


COLUMNS = ("model", "eval loss", "accuracy (correct/n)", "macro-F1", "train loss", "train time")


def notes(result: DemoResult) -> list[str]:
    """What the table's figures mean: the loss window, the eval size, start-up outside train time."""
    n = result.federated.after.n
    lines = ["train loss: mean of the first 4 -> last 4 steps",
             f"eval: {n} held-out examples, so one example is {100 / max(n, 1):.1f} accuracy points"]
    startup = result.federated.startup_seconds
    if startup:
        lines.append(f"train time excludes start-up: {startup:.0f}s to start the server and client "
                     "processes, load the model and open the sessions")
    exposed = exposure_line(result)
    if exposed is not None:
        lines.append(exposed)
    return lines


def exposure_line(result: DemoResult) -> str | None:
    """With ``--defense``: what the server could read of the run's own traffic (strongest attack,
    token accuracy on private positions), without and with the defense."""
    exposed = result.exposure
    if not exposed:
        return None
    without, with_ = exposed["without_defense"], exposed["with_defense"]
    text = (f"server reads {without['token_accuracy']:.0%} of the private tokens without the defense "
            f"({without['attack']})")
    if with_ is not None:
        text += (f", {with_['token_accuracy']:.0%} with {result.settings['defense']} ({with_['attack']}, "
                 f"ROUGE-L {with_['rouge_l']:.2f})")
    return text + f"; {exposed['victims']} validation rows, {exposed['private_tokens']} private tokens"


def results_table(result: DemoResult) -> Table:
    """Loss and accuracy before and after fine-tuning, federated vs centralized."""
    settings = result.settings
    table = Table(title=f"{settings['model']} on {settings['task']}, {settings['clients']} clients",
                  caption="\n".join(notes(result)))
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in _rows(result):
        table.add_row(*row)
    return table


def _train_loss(trainer: TrainerResult) -> str:
    if not trainer.losses:
        return "-"
    window = min(4, len(trainer.losses))
    first = sum(trainer.losses[:window]) / window
    last = sum(trainer.losses[-window:]) / window
    return f"{first:.3f} -> {last:.3f}"


def markdown_table(result: DemoResult) -> str:
    """The same table as Markdown (for closing notes and READMEs)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(result)]
    lines += ["", *(f"* {line}" for line in notes(result))]
    return "\n".join(lines) + "\n"


def plot_losses(result: DemoResult, path: Path) -> Path:
    """PNG of the training loss per step, federated vs centralized."""
    settings = result.settings
    curves = {trainer.name: trainer.losses for trainer in (result.federated, result.centralized)}
    return plot_loss_panels({f"{settings['model']} / {settings['task']}": curves},
                            f"{settings['clients']} clients vs centralized", path, dpi=120)
