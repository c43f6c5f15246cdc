"""Honest clients protect themselves: a FedAvg round's average is checked on held-out rows before it is
adopted.

Under secure aggregation the server sees only the average, so it cannot tell which client poisoned it
(a huge weight, or a scaled or arbitrary vector). Each client therefore keeps a few rows of its own data
aside (``hold_out``: seeded by ``seed`` and ``data.shard``, never trained on) and, at every round's end,
computes its loss on them with its own adapters and with the average. When the average is worse by more
than ``tolerance`` x the own loss (or ``min_tolerance`` nats, whichever is larger), the client keeps its
own adapters, logs why with the two losses, and trains on; it takes part in the next rounds as usual.
Plain and secure rounds are checked alike, in ``splitfed.client.process._federated_average``.

What the tolerance must let through: an honest average is worse on a client's own rows than its own
adapters, by the drift of the others' data. Measured (``benchmarks/self_check.py``) on tiny-llama (head 1
/ tail 1, LoRA r=4, lr 0.01, RTE, 96 rows), 2 and 4 clients with Dirichlet(0.1 and 0.5) label-skewed
shards, 4 rounds of 5 steps, 4 held-out rows: the honest average's held-out loss was at most 2.0% above
the own adapters' (often below: the others' steps help), so the default 4% rejects no honest round
there. A destroyed model is not far past it on a model this small (a uniform guess over its 259 tokens
is 5.56 nats, the trained loss 4.6-5.2): an average of every element 100 raised the held-out loss by
7-21%, an attacker's adapters x1000 averaged in by ~8%; but an average scaled to 1.9x the honest norm
(the server's norm check allows 2x) raised it by 0.3-15%, so on tiny models a mild scaling passes. On
real models a poisoned average costs nats, not percents; with many local steps on very skewed data
the honest drift grows: measure it (the benchmark) before lowering the tolerance.

Cost: per round, two eval forwards of the held-out rows through head, trunk (on the server,
``train=False``: no backward, no optimizer step there) and tail, i.e. about two thirds of one training
step's compute at a batch of ``rows`` rows, and their hidden states sent each way twice (tiny-llama, 4
rows: 10-300 ms per forward on 2 busy cores). The held-out rows are not trained on: ``rows`` fewer
training rows, at most a quarter of them. With the privacy defense on they go up as inference does
(``protect_inference``), outside the training's accountant.

What it does not give: availability. An attacker can still make every round useless to the clients that
check (they keep their own adapters, so the federation stops averaging and the clients drift apart), and
a poison small enough to pass the tolerance (a slow backdoor) is adopted.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from splitfed.client.settings import SelfCheckSettings
from splitfed.client.split_client import SplitClient
from splitfed.training.data import Batch

log = logging.getLogger(__name__)

States = dict[str, dict[str, torch.Tensor]]


def hold_out(examples: Sequence[Any], settings: SelfCheckSettings, seed: int) -> tuple[list[Any], list[Any]]:
    """(the rows to train on, the rows held out for the check): ``settings.rows`` rows, at most a quarter
    of ``examples``, drawn with ``seed``; the training rows keep their order. None are held out when the
    check is off or the data has fewer than four rows."""
    count = min(settings.rows, len(examples) // 4) if settings.enabled else 0
    if count == 0:
        return list(examples), []
    held = set(random.Random(f"self-check:{seed}").sample(range(len(examples)), count))
    return ([row for i, row in enumerate(examples) if i not in held],
            [row for i, row in enumerate(examples) if i in held])


@dataclass
class RoundCheck:
    """One round's verdict, as ``summary.json`` records it."""

    round: int
    contributors: int
    adopted: bool
    loss_own: float | None = None  # held-out loss with the client's own adapters (None: not checked)
    loss_average: float | None = None  # ... with the round's average
    reason: str = ""


class AverageCheck:
    """Adopts a round's average into ``client`` only when its held-out loss is not worse than the
    client's own by more than the tolerance; ``batch`` is the held-out rows (None: adopt unchecked)."""

    def __init__(self, settings: SelfCheckSettings, batch: Batch | None,
                 history: list[dict[str, Any]] | None = None) -> None:
        self.settings, self.batch = settings, batch
        self.history: list[dict[str, Any]] = history if history is not None else []

    @property
    def adopted(self) -> int:
        return sum(1 for entry in self.history if entry["adopted"])

    @property
    def rejected(self) -> int:
        return sum(1 for entry in self.history if not entry["adopted"])

    def allowed(self, own: float) -> float:
        """The greatest held-out loss an average may have against ``own``."""
        return own + max(self.settings.tolerance * abs(own), self.settings.min_tolerance)

    def apply(self, client: SplitClient, round_index: int, own: States, average: States,
              contributors: int) -> RoundCheck:
        """Load ``average`` into ``client``, or keep ``own`` (the client's adapters before the round) when
        the check rejects it; returns the verdict (also appended to ``history``)."""
        if self.batch is None or contributors <= 1:  # nothing held out, or the average is this client's
            client.load_adapter_states(average)
            return self._record(RoundCheck(round_index, contributors, True,
                                           reason="alone" if contributors <= 1 else "unchecked"))
        loss_own = client.evaluation_loss(self.batch)
        if not all(torch.isfinite(t).all() for state in average.values() for t in state.values()):
            verdict = RoundCheck(round_index, contributors, False, loss_own, None, "non-finite average")
        else:
            client.load_adapter_states(average)
            loss_average = client.evaluation_loss(self.batch)
            if math.isfinite(loss_average) and (not math.isfinite(loss_own)
                                                or loss_average <= self.allowed(loss_own)):
                return self._record(RoundCheck(round_index, contributors, True, loss_own, loss_average))
            verdict = RoundCheck(round_index, contributors, False, loss_own, loss_average,
                                 f"held-out loss {loss_average:.4f} with the average > "
                                 f"{self.allowed(loss_own):.4f} allowed (own {loss_own:.4f})")
        client.load_adapter_states(own)
        log.warning("round %d: average over %d clients rejected: %s; keeping this client's adapters",
                    round_index, contributors, verdict.reason)
        return self._record(verdict)

    def _record(self, verdict: RoundCheck) -> RoundCheck:
        self.history.append(asdict(verdict))
        return verdict

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` reports: counts, held-out rows and every round's verdict."""
        return {"enabled": self.batch is not None, "held_out_rows": 0 if self.batch is None
                else int(self.batch["input_ids"].shape[0]), "adopted": self.adopted,
                "rejected": self.rejected, "rounds": self.history}
