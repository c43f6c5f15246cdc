"""Run every method on every task with the same seeds, steps and hyper-parameters."""

from __future__ import annotations

import json
import logging
import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from splitfed.evaluation.methods import (
    MethodResult,
    Trained,
    encode_task,
    evaluate,
    federation_settings,
    make_collate,
    method_privacy,
    noise_skip_reason,
    shards_for,
    train_centralized,
    train_federated,
    train_federated_ray,
    zero_shot,
)
from splitfed.evaluation.network import client_split, network_skip_reason, run_network, trained_client
from splitfed.evaluation.settings import EvalSettings
from splitfed.models import load_model, num_layers
from splitfed.models.devices import resolve_device
from splitfed.models.placement import DTYPES
from splitfed.models.sources import tokenizer_of
from splitfed.observability import progress_bar
from splitfed.tasks import TaskData, TaskSpec, load_task_data, resolve_task
from splitfed.tasks.lengths import LongRowReport, check_lengths

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    settings: dict[str, Any]
    platform: dict[str, Any]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> kind, metric, sizes
    results: list[MethodResult] = field(default_factory=list)
    total_seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)  # what a preset adds (the demo: exposure)

    def get(self, task: str, method: str) -> MethodResult | None:
        return next((r for r in self.results if r.task == task and r.method == method), None)


def platform_info() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "threads": torch.get_num_threads()}


def task_spec(task: str | TaskSpec, settings: EvalSettings) -> TaskSpec:
    """The task's spec, with ``max_words`` applied to shipped generation tasks named by string."""
    spec = resolve_task(task)
    if isinstance(task, str) and spec.kind == "generation":
        spec = spec.model_copy(update={"max_words": settings.max_words})
    return spec


AfterMethod = Callable[[TaskData, str, Trained], None]


def run_eval(settings: EvalSettings, console: Console | None = None, loaded: tuple[Any, Any] | None = None,
             after_method: AfterMethod | None = None) -> EvalResult:
    """Train and score every method of ``settings`` on every task; returns all rows.

    ``loaded``: the (model, tokenizer) of ``settings.model`` when the caller has them already.
    ``after_method(task, method, trained)`` runs after each method is scored (the demo saves the
    federated adapters and attacks their traffic there).
    """
    console = console or Console()
    started = time.perf_counter()
    specs = [task_spec(task, settings) for task in settings.tasks]
    trains = any(m != "zero-shot" for m in settings.methods)
    data = [load_task_data(spec, settings.train_examples, settings.eval_examples, need_train=trains,
                           selection=settings.select_examples, seed=settings.seed) for spec in specs]
    long_rows = check_task_lengths(data, settings)
    if loaded is None:
        with console.status(f"loading {settings.model} ..."):
            loaded = load_model(settings.model, dtype=DTYPES[settings.dtype])
    model, tokenizer = loaded
    model.to(resolve_device(settings.device))
    console.print(f"loaded [bold]{settings.model}[/] ({num_layers(model)} blocks)")
    result = EvalResult(json.loads(settings.model_dump_json()), platform_info())
    plan = RunPlan.of(settings, data)
    for line in plan.lines():
        console.print(line, highlight=False)
    for report in long_rows:
        console.print(f"  [yellow]{report.describe()}[/]")
    for task in data:
        result.tasks[task.name] = {"kind": task.kind, "metric": task.metric, "train": len(task.train),
                                   "eval": len(task.eval)}
        if task.kind == "classification":
            result.tasks[task.name].update(class_info(task))
        console.print(f"task [bold]{task.name}[/] ({task.kind}, {task.metric}): {len(task.train)} training "
                      f"and {len(task.eval)} evaluation examples")
        for method in settings.methods:
            row = run_method(method, task, model, tokenizer, settings, console, after_method, plan)
            result.results.append(row)
            if row.skipped:
                console.print(f"  {method}: [yellow]{row.skipped}[/]")
            else:
                console.print(f"  {method}: {headline(task, row.metrics)} "
                              f"(train {row.train_seconds:.0f}s, eval {row.eval_seconds:.0f}s)")
    result.total_seconds = time.perf_counter() - started
    return result


def class_info(task: TaskData) -> dict[str, Any]:
    """Number of label classes (fixed label words, as CB; else 2) and the majority-class accuracy."""
    fixed = len({tuple(e.options) for e in task.eval}) == 1  # label words (CB), not choices (COPA)
    counts = Counter(e.label for e in task.eval)
    return {"classes": len(task.eval[0].options) if fixed else 2,
            "majority": max(counts.values()) / len(task.eval)}


def load_result(path: Path) -> EvalResult:
    """An :class:`EvalResult` read back from ``results.json`` (or a benchmark's JSON)."""
    data = json.loads(Path(path).read_text())
    rows = [MethodResult(**row) for row in data["results"]]
    return EvalResult(data["settings"], data["platform"], data["tasks"], rows, data["total_seconds"])


def headline(task: TaskData, metrics: dict[str, Any]) -> str:
    keys = {"accuracy": ("accuracy", "macro_f1"), "rouge": ("rouge1", "rouge2", "rougeL"),
            "squad_f1": ("f1", "exact_match")}[task.metric]
    return ", ".join(f"{key} {100 * metrics[key]:.1f}" for key in keys)


def check_task_lengths(data: list[TaskData], settings: EvalSettings) -> list[LongRowReport]:
    """Every task's rows against ``max_length``, with the model's tokenizer alone (before the model
    loads): long rows are reported, or refused with ``long_rows: refuse``."""
    tokenizer = tokenizer_of(settings.model)
    if tokenizer is None:
        return []
    reports = [check_lengths(task.name, [*task.train, *task.eval], tokenizer, settings.max_length,
                             settings.long_rows) for task in data]
    return [report for report in reports if report is not None]


@dataclass
class RunPlan:
    """What an evaluation run will do, said before it starts, and its estimate once a step is timed."""

    tasks: list[tuple[str, int, int]]  # name, training rows, evaluation rows
    trainers: list[str]
    steps: int  # optimizer steps of every trainer
    scored: list[str]
    started: float | None = None
    done: int = 0
    task: str = ""  # the task whose steps are being timed
    task_steps: int = 0

    @classmethod
    def of(cls, settings: EvalSettings, data: list[TaskData]) -> RunPlan:
        skipped = {"federated-noise"} if noise_skip_reason(settings) else set()
        trainers = [m for m in settings.methods if m != "zero-shot" and m not in skipped]
        return cls([(t.name, len(t.train), len(t.eval)) for t in data], trainers, settings.steps,
                   list(settings.methods))

    @property
    def total_steps(self) -> int:
        return self.steps * len(self.trainers) * len(self.tasks)

    def lines(self) -> list[str]:
        tasks = ", ".join(f"{name} ({train} training, {held} held-out rows)"
                          for name, train, held in self.tasks)
        lines = [f"plan: {len(self.tasks)} task(s) x {len(self.scored)} method(s): {tasks}"]
        if self.trainers:
            lines.append(f"  training: {', '.join(self.trainers)}: {self.steps} steps each, "
                         f"{self.total_steps} steps in all; the time they take is estimated after the "
                         "first one")
        lines.append(f"  scoring: {', '.join(self.scored)} on every task's held-out rows")
        return lines

    def stepped(self, console: Console, task: str = "") -> None:
        """Count a training step; after each task's first step is timed, say how long the rest should
        take (a task's rows may be longer or shorter than the last one's)."""
        now = time.perf_counter()
        self.done += 1
        if task != self.task:
            self.task, self.task_steps, self.started = task, 0, now
        self.task_steps += 1
        if self.task_steps == 2 and self.started is not None:  # the first step's warm-up is left out
            per_step = now - self.started
            left = self.total_steps - self.done
            console.print(f"estimate{f' ({task})' if task else ''}: {per_step:.1f}s per step, so about "
                          f"{_duration(per_step * left)} of training left ({left} steps), plus scoring",
                          highlight=False)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_method(method: str, task: TaskData, model: Any, tokenizer: Any, settings: EvalSettings,
               console: Console, after_method: AfterMethod | None = None,
               plan: RunPlan | None = None) -> MethodResult:
    """Train ``method`` on ``task`` (unless zero-shot) and score it on the held-out examples."""
    row = MethodResult(method, task.name)
    if method == "federated-noise":
        row.skipped = noise_skip_reason(settings)
    elif method == "federated-network":
        row.skipped = network_skip_reason(task)
    if row.skipped:
        return row
    torch.manual_seed(settings.seed)
    with progress_bar(console) as progress:
        if method == "zero-shot":
            trained = zero_shot(model, settings)
        else:
            bar = progress.add_task(f"{task.name}: {method}", total=settings.steps, status="")

            def on_step(loss: float) -> None:
                row.losses.append(loss)
                progress.update(bar, advance=1, status=f"loss {loss:.3f}")
                if plan is not None:
                    plan.stepped(console, task.name)

            began = time.perf_counter()
            if method == "federated-network":
                progress.remove_task(bar)
                trained = _train_network(model, task, settings, progress, row)
            else:
                trained = _train_in_process(method, model, tokenizer, task, settings, on_step)
            row.train_seconds = trained.train_seconds or time.perf_counter() - began
            row.startup_seconds = trained.startup_seconds
        began = time.perf_counter()
        total = len(task.eval)
        scoring = progress.add_task(f"{task.name}: {method} eval", total=total, status="")
        try:
            row.metrics = evaluate(trained, task, tokenizer, settings,
                                   lambda n: progress.update(scoring, advance=n))
        finally:
            trained.close()
        progress.update(scoring, completed=total)
        row.eval_seconds = time.perf_counter() - began
    if trained.privacy is not None:
        row.metrics["epsilon"] = trained.privacy["epsilon"]  # a float, or "inf" when unbounded
        row.metrics["delta"] = trained.privacy["delta"]
    if after_method is not None:
        after_method(task, method, trained)
    return row


def _train_in_process(method: str, model: Any, tokenizer: Any, task: TaskData, settings: EvalSettings,
                      on_step: Callable[[float], None]) -> Trained:
    encoded = encode_task(task, tokenizer, settings.max_length)
    collate_rows = make_collate(tokenizer)
    if method == "centralized":
        return train_centralized(model, encoded, collate_rows, settings, on_step)
    if method == "split":
        return train_federated(model, [encoded], collate_rows, settings, on_step)
    train = train_federated_ray if method == "federated-ray" else train_federated
    return train(model, shards_for(method, task, encoded, settings), collate_rows, settings, on_step,
                 method_privacy(settings, method), tokenizer)


def _train_network(model: Any, task: TaskData, settings: EvalSettings, progress: Any,
                   row: MethodResult) -> Trained:
    fed = federation_settings(settings, model, settings.clients, method_privacy(settings, row.method))
    run = run_network(settings.model, task, settings, fed, progress)
    row.losses.extend(run.losses)
    client = trained_client(model, fed, run.adapters)
    trained = Trained(client.logits, client_split(client, fed), cut=client.cut)
    trained.train_seconds = run.seconds
    trained.startup_seconds = run.startup_seconds
    return trained


def save_result(result: EvalResult, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    path.write_text(json.dumps(asdict(result), indent=2, default=str))
    return path
