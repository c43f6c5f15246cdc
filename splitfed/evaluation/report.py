"""Every report of an evaluation run (``splitfed eval`` and its ``splitfed demo`` preset): the main
table (rows = methods, columns = tasks with their metric), the detail table of a classification task
(loss, accuracy with its count, train loss and time per method, as the demo prints it), each federated
method's gaps to centralized and zero-shot, and the loss-curve plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from splitfed.evaluation.methods import MethodResult
from splitfed.evaluation.run import EvalResult
from splitfed.evaluation.settings import FEDERATED_METHODS, METHOD_LABELS, PRIVATE_METHODS
from splitfed.observability.plots import plot_loss_panels

MAIN_METRIC = {"accuracy": ("accuracy", "acc"), "rouge": ("rougeL", "ROUGE-L"), "squad_f1": ("f1", "F1")}


def main_value(result: EvalResult, task: str, method: str) -> float | None:
    """The task's main metric for ``method`` in points (x100), or None if it did not run."""
    row = result.get(task, method)
    if row is None or row.skipped:
        return None
    return 100.0 * row.metrics[MAIN_METRIC[result.tasks[task]["metric"]][0]]


def _label(result: EvalResult, method: str) -> str:
    settings = result.settings
    label = METHOD_LABELS[method].format(clients=settings["clients"], alpha=settings["alpha"],
                                         sub_servers=settings.get("simulation", {}).get("sub_servers", 1))
    privacy = settings.get("privacy") if method in PRIVATE_METHODS else None
    if privacy:
        sigmas = ", ".join(f"{name} C={privacy[name]['clip']} sigma={privacy[name]['sigma']}"
                           for name in ("forward", "backward") if privacy[name].get("clip") is not None)
        spent = sorted({str(r.metrics["epsilon"]) for r in result.results
                        if r.method == method and "epsilon" in r.metrics})
        defense = settings.get("defense") or "learned cut"
        label += (f" ({sigmas}; epsilon {', '.join(spent) or '?'} at delta {privacy['delta']:g})" if sigmas
                  else f" ({defense})")
    return label


def _cell(result: EvalResult, task: str, method: str) -> str:
    row = result.get(task, method)
    if row is None:
        return "-"
    if row.skipped:
        return "skipped"
    metric = result.tasks[task]["metric"]
    value = f"{main_value(result, task, method):.1f}"
    if metric == "rouge":
        return f"{100 * row.metrics['rouge1']:.1f} / {100 * row.metrics['rouge2']:.1f} / {value}"
    if result.tasks[task].get("classes", 2) > 2:
        return f"{value} / {100 * row.metrics['macro_f1']:.1f}"
    return value


def _header(result: EvalResult, task: str) -> str:
    metric = result.tasks[task]["metric"]
    if metric == "rouge":
        return f"{task} (R-1 / R-2 / R-L)"
    if result.tasks[task].get("classes", 2) > 2:
        return f"{task} (acc / macro-F1)"
    return f"{task} ({MAIN_METRIC[metric][1]})"


def markdown_table(result: EvalResult) -> str:
    """Rows = methods, columns = tasks, values in points (x100)."""
    tasks = list(result.tasks)
    methods = list(dict.fromkeys(r.method for r in result.results))
    lines = ["| method | " + " | ".join(_header(result, t) for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    if any("majority" in result.tasks[t] for t in tasks):
        cells = [f"{100 * result.tasks[t]['majority']:.1f}" if "majority" in result.tasks[t] else "-"
                 for t in tasks]
        lines.append("| majority class (no model) | " + " | ".join(cells) + " |")
    for method in methods:
        lines.append(f"| {_label(result, method)} | " + " | ".join(_cell(result, t, method) for t in tasks)
                     + " |")
    sizes = ", ".join(f"{t} {info['eval']}" for t, info in result.tasks.items())
    return "\n".join(lines) + f"\n\nHeld-out examples: {sizes}.\n"


def comparisons(result: EvalResult) -> list[dict]:
    """Per task and federated method: its main metric, centralized's and zero-shot's, and the gaps (in
    points; positive: the federated method scored higher). Measurements only, no verdict: what gap
    matters is the user's call."""
    rows = []
    for task in result.tasks:
        central = main_value(result, task, "centralized")
        zero = main_value(result, task, "zero-shot")
        for method in FEDERATED_METHODS:
            value = main_value(result, task, method)
            if value is None or (central is None and zero is None):
                continue
            rows.append({"task": task, "method": method, "value": value, "centralized": central,
                         "zero_shot": zero,
                         "gap_to_centralized": None if central is None else value - central,
                         "gap_to_zero_shot": None if zero is None else value - zero})
    return rows


def comparison_lines(result: EvalResult) -> str:
    lines = []
    for c in comparisons(result):
        against = []
        if c["centralized"] is not None:
            against.append(f"centralized {c['centralized']:.1f} ({c['gap_to_centralized']:+.1f})")
        if c["zero_shot"] is not None:
            against.append(f"zero-shot {c['zero_shot']:.1f} ({c['gap_to_zero_shot']:+.1f})")
        lines.append(f"- {c['task']}, {c['method']}: {c['value']:.1f}; " + ", ".join(against))
    return "\n".join(lines) + "\n"


def skipped_lines(result: EvalResult) -> str:
    skipped = {r.method: r.skipped for r in result.results if r.skipped}
    return "".join(f"- {method}: {why}\n" for method, why in skipped.items())


def markdown_report(result: EvalResult, command: str | None = None) -> str:
    s = result.settings
    trained = any(r.losses for r in result.results)
    parts = [f"# Evaluation: {s['model']}\n", markdown_table(result)]
    if trained and "per_task" in s:
        parts.append("\nEvery method of a task has the same seed, steps, batch and hyper-parameters; "
                     "the settings per task are listed below. Values are x100.\n")
    elif trained:
        parts.append(f"\nAll methods: {s['steps']} optimizer steps of {s['batch_size']} examples, "
                     f"LoRA r={s['lora_rank']}, lr {s['lr']}, seed {s['seed']}; federated: {s['clients']} "
                     f"clients, {s['rounds']} FedAvg rounds. Values are x100.\n")
    else:
        parts.append("\nValues are x100.\n")
    compared = comparison_lines(result)
    if compared.strip():
        parts.append("\n## Federated against centralized and zero-shot (points)\n\n" + compared)
    skipped = skipped_lines(result)
    if skipped:
        parts.append("\n## Skipped\n\n" + skipped)
    details = [detail_markdown(result, task) for task in result.tasks
               if result.tasks[task]["kind"] == "classification" and trained]
    if details:
        parts.append("\n## Per task: loss, accuracy with its count, training\n\n" + "\n".join(details))
    if command:
        parts.append(f"\nReproduce with:\n\n```\n{command}\n```\n")
    return "".join(parts)


# ------------------------------------------------------------------------------------ the detail table

DETAIL_COLUMNS = ("method", "eval loss", "accuracy (correct/n)", "macro-F1", "train loss", "train time")


def _rows_of(result: EvalResult, task: str) -> list[MethodResult]:
    return [r for r in result.results if r.task == task and not r.skipped]


def _accuracy(metrics: dict[str, Any]) -> str:
    """Accuracy with the count it comes from: on 56 examples one example is 1.8 points."""
    n = int(metrics["n"])
    return f"{metrics['accuracy']:.3f} ({round(metrics['accuracy'] * n)}/{n})"


def _train_loss(losses: list[float]) -> str:
    if not losses:
        return "-"
    window = min(4, len(losses))
    return f"{sum(losses[:window]) / window:.3f} -> {sum(losses[-window:]) / window:.3f}"


def detail_rows(result: EvalResult, task: str) -> list[tuple[str, ...]]:
    """One row per method of a classification ``task``: loss, accuracy (c/n), F1, train loss and time."""
    rows = []
    for row in _rows_of(result, task):
        metrics = row.metrics
        trained = row.method != "zero-shot"
        rows.append((_label(result, row.method), f"{metrics['loss']:.3f}", _accuracy(metrics),
                     f"{metrics['macro_f1']:.3f}", _train_loss(row.losses),
                     f"{row.train_seconds:.0f}s" if trained else "-"))
    return rows


def detail_notes(result: EvalResult, task: str) -> list[str]:
    """What the detail table's figures mean: the loss window, the eval size, start-up apart."""
    n = result.tasks[task]["eval"]
    lines = ["train loss: mean of the first 4 -> last 4 steps",
             f"eval: {n} held-out examples, so one example is {100 / max(n, 1):.1f} accuracy points"]
    startup = max((r.startup_seconds for r in _rows_of(result, task)), default=0.0)
    if startup:
        lines.append(f"train time excludes start-up: {startup:.0f}s to start the server and client "
                     "processes, load the model and open the sessions")
    exposed = exposure_line(result)
    if exposed is not None:
        lines.append(exposed)
    return lines


def exposure_line(result: EvalResult) -> str | None:
    """With the demo's ``--defense``: what the server could read of the run's own traffic (strongest
    attack, token accuracy on private positions), without and with the defense."""
    exposed = result.extras.get("exposure")
    if not exposed:
        return None
    without, with_ = exposed["without_defense"], exposed["with_defense"]
    text = (f"server reads {without['token_accuracy']:.0%} of the private tokens without the defense "
            f"({without['attack']})")
    if with_ is not None:
        text += (f", {with_['token_accuracy']:.0%} with {result.settings.get('defense')} "
                 f"({with_['attack']}, ROUGE-L {with_['rouge_l']:.2f})")
    return text + f"; {exposed['victims']} validation rows, {exposed['private_tokens']} private tokens"


def detail_table(result: EvalResult, task: str) -> Table:
    """The detail table of ``task`` for the terminal."""
    settings = result.settings
    table = Table(title=f"{settings['model']} on {task}, {settings['clients']} clients",
                  caption="\n".join(detail_notes(result, task)))
    for column in DETAIL_COLUMNS:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in detail_rows(result, task):
        table.add_row(*row)
    return table


def detail_markdown(result: EvalResult, task: str) -> str:
    """The detail table of ``task`` as Markdown, with its notes."""
    lines = [f"**{task}**", "", "| " + " | ".join(DETAIL_COLUMNS) + " |", "|" + "---|" * len(DETAIL_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in detail_rows(result, task)]
    lines += ["", *(f"* {line}" for line in detail_notes(result, task))]
    return "\n".join(lines) + "\n"


def plot_losses(result: EvalResult, path: Path) -> Path:
    """PNG: one panel per task, the training loss per optimizer step of every trained method."""
    panels = {task: {r.method: r.losses for r in result.results if r.task == task and r.losses}
              for task in result.tasks}
    return plot_loss_panels(panels, f"{result.settings['model']}: training loss, same steps and seeds", path,
                            smooth=True, dashed=frozenset({"split"}))  # split equals centralized
