"""What a client process does after each training step: show progress, log metrics, average with the
other clients at a round's end, checkpoint (hooks of ``splitfed.client.training_loop``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID

from splitfed.client.link import ServerLink
from splitfed.client.settings import ClientSettings
from splitfed.client.training_loop import StepDone
from splitfed.observability import MetricsWriter
from splitfed.privacy import format_epsilon


def report_progress(directory: Path, step: int, loss: float, privacy: dict[str, Any] | None = None) -> None:
    """Leave the step count (and the privacy spent) where an orchestrator (the demo) can follow it."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / "progress.json.tmp"
    record: dict[str, Any] = {"step": step, "loss": loss}
    if privacy is not None:
        record["privacy"] = privacy
    staging.write_text(json.dumps(record))
    staging.replace(directory / "progress.json")


class ShowProgress:
    """The progress bar, and ``progress.json`` where an orchestrator (the demo) follows the client."""

    def __init__(self, progress: Progress, task: TaskID, output: Path) -> None:
        self.progress, self.task, self.output = progress, task, output

    def after_step(self, done: StepDone) -> None:
        privacy = done.privacy
        status = f"round {done.round_index} loss {done.loss:.3f}"
        if privacy is not None:
            status += f" {format_epsilon(privacy)}"
        self.progress.update(self.task, advance=1, status=status)
        report_progress(self.output, done.step, done.loss, privacy)

    def status(self, text: str) -> None:
        self.progress.update(self.task, status=text)


class LogMetrics:
    """One ``metrics.csv`` row (and TensorBoard scalars) per step: loss, speed, bytes, epsilon."""

    def __init__(self, metrics: MetricsWriter, link: ServerLink) -> None:
        self.metrics, self.link = metrics, link

    def after_step(self, done: StepDone) -> None:
        privacy = done.privacy
        epsilon = {} if privacy is None or privacy["epsilon"] == "inf" else {"epsilon": privacy["epsilon"]}
        self.metrics.log(done.step, loss=done.loss, tokens_per_s=done.tokens / max(done.seconds, 1e-9),
                         bytes_sent=self.link.bytes_sent, bytes_received=self.link.bytes_received, **epsilon)


class RoundsAndCheckpoints:
    """At a round's end, FedAvg with the other clients (if on) and a checkpoint; in between, a
    checkpoint every ``checkpoint_every`` steps."""

    def __init__(self, settings: ClientSettings, shown: ShowProgress, save: Callable[[], None],
                 average: Callable[[int], None]) -> None:
        self.settings, self.shown, self.save, self.average = settings, shown, save, average

    def after_step(self, done: StepDone) -> None:
        if done.round_end:
            if self.settings.fedavg:
                self.shown.status(f"round {done.round_index}: waiting for FedAvg")
                self.average(done.round_index)
            self.save()
        elif self.settings.checkpoint_every and done.step % self.settings.checkpoint_every == 0:
            self.save()
