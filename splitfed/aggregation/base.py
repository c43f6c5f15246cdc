"""The one shape of a FedAvg round on the server, plain or secure, and the registry that picks one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from splitfed.aggregation.plain_rounds import PlainRounds
from splitfed.aggregation.robust import AverageGuard, RobustAggregationSettings, ServedWeights, State
from splitfed.aggregation.secure_rounds import Participants, SecureRounds


class RoundAggregation(Protocol):
    """Server-side FedAvg rounds: clients hand in each phase's message and get the phase's answer.

    Plain rounds have one phase (adapter state and weight in, the average out); secure rounds have the
    four of ``Phase``. ``message_kind`` is the sealed message kind their requests travel in.
    """

    name: str
    message_kind: str

    @property
    def last_round(self) -> int:
        """The last round closed; settable when resuming from a checkpoint."""

    @last_round.setter
    def last_round(self, value: int) -> None: ...

    def submit(self, client: str, round_index: int, phase: int, value: Any) -> Any:
        """Block until the phase closes; its answer for ``client``. Raises ``AggregationError``."""


def _secure(members: Callable[[], set[str]], timeout_s: float, threshold: int | None,
            max_norm_ratio: float | None, participants: Participants | None = None,
            straggler_s: float | None = None, weights: ServedWeights | None = None,
            robust: RobustAggregationSettings | None = None,
            reference: Callable[[], State] | None = None) -> RoundAggregation:
    guard = AverageGuard(robust, max_norm_ratio, reference)
    return SecureRounds(members, timeout_s, threshold, max_norm_ratio, participants, straggler_s, weights,
                        guard)


def _plain(members: Callable[[], set[str]], timeout_s: float, threshold: int | None,
           max_norm_ratio: float | None, participants: Participants | None = None,
           straggler_s: float | None = None, weights: ServedWeights | None = None,
           robust: RobustAggregationSettings | None = None,
           reference: Callable[[], State] | None = None) -> RoundAggregation:
    return PlainRounds(members, timeout_s, weights, robust)


ROUND_AGGREGATIONS: dict[str, Callable[..., RoundAggregation]] = {"secure": _secure, "plain": _plain}


def make_rounds(name: str, members: Callable[[], set[str]], timeout_s: float = 300.0,
                threshold: int | None = None, max_norm_ratio: float | None = 2.0,
                participants: Participants | None = None,
                straggler_s: float | None = None, weights: ServedWeights | None = None,
                robust: RobustAggregationSettings | None = None,
                reference: Callable[[], State] | None = None) -> RoundAggregation:
    """The round aggregation called ``name`` ("secure" or "plain") over the clients of ``members()``.
    ``threshold``, ``max_norm_ratio``, ``participants``, ``straggler_s`` and ``reference`` (the trunk
    adapter, a yardstick for the average) apply to secure rounds (see ``SecureRounds``), ``weights``
    (what the server ran for each client, which bounds its weight) to both, ``robust`` to both (its
    strategy and clipping to plain rounds, its checks of the average to secure ones); see
    ``splitfed.aggregation.robust``."""
    if name not in ROUND_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {tuple(ROUND_AGGREGATIONS)}, got {name!r}")
    return ROUND_AGGREGATIONS[name](members, timeout_s, threshold, max_norm_ratio, participants, straggler_s,
                                    weights, robust, reference)


def rounds_status(rounds: RoundAggregation) -> dict[str, int]:
    """The round counters as status and checkpoints report them: ``plain_rounds`` and
    ``secure_rounds``, the one not in use at 0."""
    return {f"{name}_rounds": rounds.last_round if name == rounds.name else 0 for name in ROUND_AGGREGATIONS}
