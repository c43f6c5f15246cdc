"""What one enrolled client can do to a FedAvg round, bounded (issue 40, item 2).

* ``ServedWeights``: a client's FedAvg weight is what the server observed, not what it claims: the
  training rows the server ran for it since its last round, capped at ``max_weight`` (Flower's SecAgg+
  ``max_weight`` is the anchor). A claim counts only up to that (``min(claim, served)``), so an honest
  client claiming its shard size keeps its weight whenever it trained at least that many rows in the
  round, and a claimed 6.4e7 is worth exactly the rows the client trained.
* Plain rounds see every client's adapters, so they can use the robust strategies users know from
  Flower: ``fedmedian`` (coordinate-wise median), ``fedtrimmedavg`` (trimmed mean, ``trim_beta`` from
  each end) and clipping each client's update to ``clip_norm_ratio`` x the median update norm.
* Secure rounds see only the average, so ``AverageGuard`` checks what the server can see, from round 1
  on: its scale against the trunk adapter the server trains itself (the same kind of adapter, trained by
  the same clients' steps, and guarded against their gradients: an honest yardstick in round 1 already),
  and its distance from the last published average against the steps honest rounds produced (the
  median of the last accepted ones; the trunk adapter's own movement until there is one). A round
  failing a check is not published: every client keeps its adapters, the round is reported rejected
  with its reason, and ``status`` counts the rejections (in a row, too), so a client that keeps every
  round rejected is visible, not silent.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from splitfed.aggregation.fedavg import keywise_average
from splitfed.security.errors import SecAggError

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]
Strategy = Literal["fedavg", "fedmedian", "fedtrimmedavg"]


class RobustAggregationSettings(BaseModel):
    """How much one client can weigh in a FedAvg round, and how the server checks a round's result."""

    model_config = ConfigDict(extra="forbid")
    max_weight: float = Field(1000.0, gt=0, description="the largest FedAvg weight a client gets in a round. "
                              "A client's weight is min(what it claims, the training rows the server ran "
                              "for it since its last round, this); in a round where the server ran no "
                              "training for any of its clients (e.g. it restarted), the claims capped at "
                              "this")
    strategy: Strategy = Field(  # type: ignore[valid-type]
        "fedavg", description="plain aggregation: fedavg (the weighted mean), fedmedian (the coordinate-wise "
                              "median, unweighted, as Flower's FedMedian) or fedtrimmedavg (the mean "
                              "without the trim_beta largest and smallest values of each coordinate, "
                              "unweighted, as Flower's FedTrimmedAvg)")
    trim_beta: float = Field(0.2, ge=0, lt=0.5, description="plain aggregation, fedtrimmedavg: the fraction "
                             "cut from each end of every coordinate")
    clip_norm_ratio: float | None = Field(None, gt=0, description="plain aggregation: clip each client's "
                                          "update (its adapters minus the last average; in round 1 minus "
                                          "the coordinate-wise median) to this times the median update "
                                          "norm before aggregating. Unset: no clipping")
    max_scale_ratio: float | None = Field(10.0, gt=1, description="secure aggregation, from round 1: "
                                          "reject a round whose average's root-mean-square value exceeds "
                                          "this times the trunk adapter's (the server's own adapter of the "
                                          "same kind). Unset: not checked")
    max_step_ratio: float | None = Field(4.0, gt=1, description="secure aggregation: reject a round whose "
                                         "average moved from the last published one (root mean square) "
                                         "more than this times the median move a round of the last "
                                         "accepted rounds (before there is one, the trunk adapter's own "
                                         "move a round), times sqrt(rounds since that one). Unset: not "
                                         "checked")
    step_window: int = Field(8, ge=1, description="secure aggregation: accepted rounds the median move is "
                             "taken over")


    @classmethod
    def unchecked(cls) -> RobustAggregationSettings:
        """FedAvg with server-observed weights, the average checked only as before (finite, the norm
        ratio): what a ``TrunkService`` built without settings does; ``splitfed serve`` takes the
        server settings' ``robust_aggregation``, whose defaults check."""
        return cls(max_scale_ratio=None, max_step_ratio=None)


class ServedWeights:
    """The training rows the server ran for each client since its last round: its FedAvg weight."""

    def __init__(self, max_weight: float = 1000.0) -> None:
        self.max_weight = float(max_weight)
        self._lock = threading.Lock()
        self._rows: dict[str, float] = {}

    def served(self, client: str, rows: int) -> None:
        """``client`` sent a training step (or micro-batch) of ``rows`` rows."""
        with self._lock:
            self._rows[client] = self._rows.get(client, 0.0) + rows

    def pending(self, client: str) -> float:
        with self._lock:
            return self._rows.get(client, 0.0)

    def grant(self, clients: Sequence[str]) -> dict[str, float]:
        """The largest weight each of ``clients`` may have in the round now closing, and their counts
        start again. When the server ran no training for any of them (it restarted, or the round only
        merges adapters), each may have ``max_weight``: their claims count, capped."""
        with self._lock:
            rows = {client: min(self._rows.pop(client, 0.0), self.max_weight) for client in clients}
        if not any(rows.values()):
            return dict.fromkeys(clients, self.max_weight)
        return rows

    def weights(self, claims: dict[str, float]) -> dict[str, float]:
        """Plain rounds: each claim bounded by what ``grant`` allows."""
        granted = self.grant(sorted(claims))
        return {client: min(float(claim), granted[client]) for client, claim in claims.items()}


# -- plain rounds: robust strategies ------------------------------------------------------------------
def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach().to(torch.float64) for t in tensors])


def coordinate_median(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The coordinate-wise median (the mean of the two middle values for an even count, as numpy's)."""
    ordered = _stack(tensors).sort(dim=0).values
    n = len(tensors)
    middle = ordered[(n - 1) // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return middle.to(tensors[0].dtype)


def trimmed_mean(tensors: Sequence[torch.Tensor], beta: float) -> torch.Tensor:
    """The coordinate-wise mean without the ``int(beta * n)`` largest and smallest values (Flower's
    ``FedTrimmedAvg``, scipy's ``trim_mean``)."""
    n = len(tensors)
    cut = int(beta * n)
    if n - 2 * cut <= 0:
        raise ValueError(f"trim_beta {beta} leaves nothing of {n} values")
    ordered = _stack(tensors).sort(dim=0).values
    return ordered[cut:n - cut].mean(dim=0).to(tensors[0].dtype)


def _norm(state: State) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in state.values()))


def clip_updates(states: Sequence[State], reference: State, ratio: float) -> list[State]:
    """Each state's update (minus ``reference``, key by key) scaled down to at most ``ratio`` x the
    median update norm; a state within the bound is returned as it is."""
    updates = [{k: v.double() - reference[k].double() for k, v in s.items() if k in reference}
               for s in states]
    norms = [_norm(u) for u in updates]
    bound = ratio * float(torch.tensor(norms, dtype=torch.float64).median())
    clipped = []
    for state, update, norm in zip(states, updates, norms, strict=True):
        if norm <= bound or norm == 0:
            clipped.append(state)
            continue
        factor = bound / norm
        clipped.append({k: (reference[k].double() + update[k] * factor).to(v.dtype) if k in update else v
                        for k, v in state.items()})
    return clipped


def robust_average(states: Sequence[State], weights: Sequence[float], settings: RobustAggregationSettings,
                   previous: State | None = None) -> State:
    """A plain round's result: ``settings.strategy`` over the states (each key over the states holding
    it), after clipping each update if ``clip_norm_ratio`` is set (round 1: ``previous`` None, the
    updates are taken from the coordinate-wise median)."""
    states = list(states)
    if settings.clip_norm_ratio is not None and len(states) > 1:
        reference = dict(previous) if previous is not None else {}
        for key in dict.fromkeys(k for s in states for k in s):
            if key not in reference:
                reference[key] = coordinate_median([s[key] for s in states if key in s])
        states = clip_updates(states, reference, settings.clip_norm_ratio)
    if settings.strategy == "fedavg":
        return keywise_average(states, weights)
    combine: Callable[[Sequence[torch.Tensor]], torch.Tensor] = (
        coordinate_median if settings.strategy == "fedmedian"
        else lambda tensors: trimmed_mean(tensors, settings.trim_beta))
    keys = dict.fromkeys(k for s in states for k in s)
    return {key: combine([s[key] for s in states if key in s]) for key in keys}


# -- secure rounds: what the server can see of the average --------------------------------------------
def _rms(state: State) -> float:
    count = sum(t.numel() for t in state.values())
    return _norm(state) / math.sqrt(count) if count else 0.0


def _flat(state: State) -> State:
    return {k: v.detach().to("cpu", torch.float64, copy=True) for k, v in state.items()}


class AverageGuard:
    """Checks a secure round's average before it is published (see the module docstring).

    ``reference()``: the trunk adapter the server trains (None: the scale check and the trunk fallback
    of the step check are off). ``max_norm_ratio``: the older rule, the average's norm against the
    previous round's, kept as it was."""

    def __init__(self, settings: RobustAggregationSettings | None = None, max_norm_ratio: float | None = 2.0,
                 reference: Callable[[], State] | None = None) -> None:
        self.settings = settings or RobustAggregationSettings()
        self.max_norm_ratio = max_norm_ratio
        self._reference = reference
        self.previous_norm: float | None = None
        self._published: State | None = None  # the last accepted average
        self._trunk_then: State | None = None  # the trunk adapter when it was accepted
        self._rounds_since = 0  # rounds closed since the last accepted average
        self._steps: deque[float] = deque(maxlen=self.settings.step_window)  # accepted moves per round
        self.rejected = 0
        self.rejected_in_a_row = 0
        self.last_rejection: str | None = None

    def check(self, round_index: int, average: State) -> None:
        """Accept ``average`` (it becomes the reference) or raise ``SecAggError`` saying why not."""
        self._rounds_since += 1
        try:
            trunk = self._trunk()
            measured = self._measure(average, trunk)
        except SecAggError as error:
            self.rejected += 1
            self.rejected_in_a_row += 1
            self.last_rejection = f"round {round_index}: {error}"
            log.warning("round %d rejected (%d in a row): %s", round_index, self.rejected_in_a_row, error)
            raise
        self.previous_norm, step = measured
        if step is not None:
            self._steps.append(step)
        self._published, self._trunk_then = _flat(average), trunk
        self._rounds_since = 0
        self.rejected_in_a_row = 0

    def _trunk(self) -> State | None:
        if self._reference is None:
            return None
        try:
            return _flat(self._reference())
        except Exception:  # noqa: BLE001 - a yardstick that cannot be read is skipped, not fatal
            log.debug("trunk adapter not readable as a yardstick", exc_info=True)
            return None

    def _measure(self, average: State, trunk: State | None) -> tuple[float, float | None]:
        """(the average's norm, its move per round from the last published average, or None)."""
        keep = "every client keeps its adapters"
        if not all(bool(torch.isfinite(t).all()) for t in average.values()):
            raise SecAggError(f"the average is not finite: rejected, {keep}")
        norm = _norm(average)
        if (self.max_norm_ratio is not None and self.previous_norm is not None
                and norm > self.max_norm_ratio * self.previous_norm):
            raise SecAggError(f"the average's norm {norm:.4g} exceeds {self.max_norm_ratio:g} x the previous "
                              f"round's {self.previous_norm:.4g}: rejected, {keep}")
        ratio = self.settings.max_scale_ratio
        if ratio is not None and trunk:
            scale, yardstick = _rms(average), _rms(trunk)
            if yardstick > 0 and scale > ratio * yardstick:
                raise SecAggError(f"the average's values (root mean square {scale:.4g}) exceed {ratio:g} x "
                                  f"the trunk adapter's ({yardstick:.4g}): rejected, {keep}")
        if self._published is None:
            return norm, None
        if set(average) != set(self._published):
            return norm, None  # other adapters (a client's blocks changed): nothing to compare
        rounds = self._rounds_since
        move = _rms({k: average[k].double() - self._published[k] for k in average})
        ratio = self.settings.max_step_ratio
        if ratio is not None:
            usual, source = self._usual_move(trunk)
            # after rejected rounds the honest clients kept training: the bound grows as sqrt(rounds), so
            # one client cannot stop averaging for good with a vector of a fixed size (status shows it)
            if usual is not None and usual > 0 and move > ratio * usual * math.sqrt(rounds):
                since = "" if rounds == 1 else f" {rounds} rounds ago"
                raise SecAggError(f"the average moved {move:.4g} (root mean square) from the last one "
                                  f"published{since}, more than {ratio:g} x {source} ({usual:.4g} a round)"
                                  f"{'' if rounds == 1 else f' x sqrt({rounds})'}: rejected, {keep}")
        return norm, move / rounds

    def _usual_move(self, trunk: State | None) -> tuple[float | None, str]:
        if self._steps:
            return float(torch.tensor(list(self._steps), dtype=torch.float64).median()), \
                "the median move of the last accepted rounds"
        then = self._trunk_then
        if trunk and then and set(trunk) == set(then):
            moved = _rms({k: trunk[k] - then[k] for k in trunk}) / self._rounds_since
            return moved, "the trunk adapter's move over the same rounds"
        return None, ""

    def status(self) -> dict[str, object]:
        return {"rounds_rejected": self.rejected, "rounds_rejected_in_a_row": self.rejected_in_a_row,
                "last_round_rejection": self.last_rejection}
