"""A client's training loop: the next batch, one split step through the server link (which reconnects
and repeats an interrupted step), then every hook in order: progress, metrics, FedAvg rounds and
checkpoints are hooks, so the loop itself stays this short."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from splitfed.client.checkpointing import RunState
from splitfed.client.link import ServerLink
from splitfed.client.split_client import SplitClient
from splitfed.privacy import PrivacyBudgetExhausted


@dataclass(frozen=True)
class StepDone:
    """One finished training step, as the hooks see it."""

    step: int  # steps done so far, this one included
    loss: float
    tokens: int  # tokens of the batch
    seconds: float  # the step's wall time, from batch to loss
    round_index: int  # 1-based FedAvg round the step belongs to
    round_end: bool  # the round's last step
    privacy: dict[str, Any] | None = None  # the defense's report after the step (epsilon spent), if any


class StepHook(Protocol):
    def after_step(self, done: StepDone) -> None: ...


@dataclass
class LoopOutcome:
    interrupted: bool = False  # stopped by a signal; a checkpoint is due
    stopped: str | None = None  # why training ended early (the privacy budget is spent)


def train_steps(client: SplitClient, link: ServerLink, batches: Iterator[dict[str, Any]], state: RunState,
                steps: int, per_round: int, hooks: Sequence[StepHook], stop: threading.Event,
                reconnected: Callable[[Any], None]) -> LoopOutcome:
    """Run steps until ``state.steps_done`` reaches ``steps``, ``stop`` is set, or the budget is spent."""
    while state.steps_done < steps:
        if stop.is_set():
            return LoopOutcome(interrupted=True)
        batch = next(batches)
        started = time.perf_counter()
        try:
            loss = link.call(lambda _remote, batch=batch: client.train_step(batch), reconnected)
        except PrivacyBudgetExhausted as error:
            return LoopOutcome(stopped=str(error))
        state.steps_done += 1
        state.losses.append(loss)
        tokens = int(batch["attention_mask"].sum())
        state.tokens += tokens
        seconds = time.perf_counter() - started
        privacy = None if client.defense is None else client.defense.report()  # once, for every hook
        done = StepDone(state.steps_done, loss, tokens, seconds, (state.steps_done - 1) // per_round + 1,
                        state.steps_done % per_round == 0, privacy)
        for hook in hooks:
            hook.after_step(done)
    return LoopOutcome()
