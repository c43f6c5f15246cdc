"""Plain FedAvg rounds on the server: wait for every client of a round, answer each with the average.

The server sees each client's adapters here; under secure aggregation (``secure_rounds.py``) it sees
only their weighted sum. Both implement ``RoundAggregation``.

A client's weight is its claim bounded by the training rows the server ran for it since its last round
(``ServedWeights``), and the round's result is FedAvg or, as configured, a robust strategy (FedMedian,
FedTrimmedAvg, clipped updates: ``splitfed.aggregation.robust``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from splitfed.aggregation.robust import RobustAggregationSettings, ServedWeights, robust_average

log = logging.getLogger(__name__)


PLAIN_PHASE = 0


class AggregationError(ValueError):
    """A submission that does not fit the round (other keys or shapes, a stale round, a bad weight)."""


class PlainRounds:
    """Collects (weight, state) per client for a round; the average is released once every expected
    client has submitted or left, or when the deadline passes (the late ones are left out)."""

    name = "plain"
    message_kind = "aggregate"

    def __init__(self, expected: Callable[[], set[str]], timeout_s: float = 300.0,
                 weights: ServedWeights | None = None,
                 robust: RobustAggregationSettings | None = None) -> None:
        """``weights``: what the server ran for each client, which bounds its claimed weight (None: the
        claims count as they are). ``robust``: the strategy and clipping (default: FedAvg)."""
        self.weights = weights
        self.robust = robust or RobustAggregationSettings()
        self._previous: dict[str, torch.Tensor] | None = None  # the last average (clipping's reference)
        self._expected = expected
        self._timeout_s = timeout_s
        self._condition = threading.Condition()
        self._round = 0
        self._submissions: dict[str, tuple[float, dict[str, torch.Tensor]]] = {}
        self._result: dict[int, tuple[dict[str, torch.Tensor], int]] = {}
        self._deadline: float | None = None
        self.partial_keys = False  # clients with their own partitions hold different blocks (keywise FedAvg)

    @property
    def last_round(self) -> int:
        """The last round averaged (0 before the first); settable when resuming from a checkpoint."""
        with self._condition:
            return self._round

    @last_round.setter
    def last_round(self, value: int) -> None:
        with self._condition:
            self._round = value
            self._result = {}

    def submit(self, client: str, round_index: int, phase: int,
               value: tuple[dict[str, torch.Tensor], float]) -> tuple[dict[str, torch.Tensor], int]:
        """Hand in ``value`` = (adapter state, weight); blocks until round ``round_index`` is averaged and
        returns (average, number of contributors). A plain round has one phase (``PLAIN_PHASE``)."""
        if phase != PLAIN_PHASE:
            raise AggregationError(f"a plain FedAvg round has one phase, got {phase}")
        state, weight = value
        if not weight > 0:
            raise AggregationError(f"weight must be positive, got {weight}")
        with self._condition:
            if round_index in self._result:
                raise AggregationError(f"round {round_index} is already closed")
            if round_index != self._round + 1:
                raise AggregationError(f"round {round_index} submitted while round {self._round + 1} is open")
            if self._submissions:
                reference = next(iter(self._submissions.values()))[1]
                shapes_differ = any(reference[k].shape != v.shape for k, v in state.items() if k in reference)
                if shapes_differ or (set(reference) != set(state) and not self.partial_keys):
                    raise AggregationError("adapter keys or shapes differ from the other clients'")
            self._submissions[client] = (weight, state)
            if self._deadline is None:
                self._deadline = time.monotonic() + self._timeout_s
            self._condition.notify_all()
            while round_index not in self._result:
                if self._ready() or time.monotonic() >= self._deadline:
                    self._close_round(round_index)
                    break
                self._condition.wait(0.2)
            return self._result[round_index]

    def _ready(self) -> bool:
        return self._expected() <= set(self._submissions)

    def _close_round(self, round_index: int) -> None:
        names = sorted(self._submissions)
        missing = sorted(self._expected() - set(names))
        claims = {n: self._submissions[n][0] for n in names}
        weights = self.weights.weights(claims) if self.weights is not None else claims
        left_out = [n for n in names if weights[n] <= 0]  # trained nothing while others did
        counted = [n for n in names if weights[n] > 0]
        average = robust_average([self._submissions[n][1] for n in counted], [weights[n] for n in counted],
                                 self.robust, self._previous)
        if any(weights[n] != claims[n] for n in names):
            log.info("round %d: weights %s (claimed %s, bounded by the training rows served)", round_index,
                     {n: weights[n] for n in names}, claims)
        if left_out:
            log.warning("round %d: %s trained nothing since the last round: weight 0", round_index,
                        ", ".join(left_out))
        self._previous = average
        self._result = {round_index: (average, len(names))}
        self._round = round_index
        self._submissions = {}
        self._deadline = None
        log.info("round %d averaged over %s%s", round_index, ", ".join(names),
                 f" (left out: {', '.join(missing)})" if missing else "")
        self._condition.notify_all()
