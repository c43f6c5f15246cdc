"""FedAvg rounds under secure aggregation: the server relays keys and shares and learns only the average.

A round runs the four phases of the secure-aggregation protocol (``secagg_client.py``: advertise keys,
share keys, masked input, reveal shares). Each phase is a barrier: a client's request waits until every
client still expected in the round has sent the same phase, or until the round deadline, after which the
late ones are left out (a client that drops out after sharing its keys is unmasked from the others'
shares). A round with fewer than the threshold (a strict majority of the round's clients, or more if
configured) left fails for everyone: the clients keep their own adapters.

A round waits for the clients that take part in it: those that trained since the last round closed
(``participants``) and those that announced it (sent its first phase). Once these have all sent a phase,
or at least half the connected clients have, the phase waits at most ``straggler_s`` after the last
arrival for the others: an enrolled client that stays idle, or one that announced the round and went
quiet, costs seconds, not the round deadline. The threshold rules are the same whoever is left out.

Weights (issue 40, item 2). Under secure aggregation each client multiplies its weight into its vector
before masking, so the server cannot apply a weight itself: it can only bind the one the client applies.
When the keys are shared (the reply to the second phase) the server tells each client the largest weight
it grants it in the round (``ServedWeights``: the training rows it ran for it since its last round,
capped); an honest client masks with min(its claim, that) and a masked input claiming more is refused
(that client is then left out as if it had dropped, and unmasked from the others' shares). The
server divides the sum by the weights it accepted. A client may still scale its vector instead of its
weight: that is what ``AverageGuard`` checks, on the average, from round 1 on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from splitfed.aggregation.plain_rounds import AggregationError
from splitfed.aggregation.robust import AverageGuard, ServedWeights
from splitfed.aggregation.secagg_round import Phase, RoundRoster, majority_threshold
from splitfed.aggregation.secagg_server import SecAggServer
from splitfed.security.errors import SecAggError

log = logging.getLogger(__name__)

Participants = Callable[[float], set[str]]  # clients that trained after a time (time.monotonic)

ADVERTISE, SHARE, MASKED, REVEAL = Phase.ADVERTISE, Phase.SHARE, Phase.MASKED, Phase.REVEAL
PHASE_NAMES = {phase.value: phase.description for phase in Phase}


@dataclass
class _Round:
    index: int
    phase: int
    expected: set[str]
    deadline: float
    submissions: dict[str, Any] = field(default_factory=dict)
    last_arrival: float = 0.0  # when the phase's latest message came
    results: dict[int, Any] = field(default_factory=dict)
    server: SecAggServer | None = None
    granted: dict[str, float] = field(default_factory=dict)  # the weight each client may claim
    error: str | None = None
    done: bool = False


class SecureRounds:
    """Runs the server side of secure-aggregation rounds for the clients of ``members()``."""

    name = "secure"
    message_kind = "secagg"

    def __init__(self, members: Callable[[], set[str]], timeout_s: float = 300.0,
                 threshold: int | None = None, max_norm_ratio: float | None = 2.0,
                 participants: Participants | None = None, straggler_s: float | None = None,
                 weights: ServedWeights | None = None, guard: AverageGuard | None = None) -> None:
        """``members()``: the connected clients (one that leaves is no longer waited for).
        ``participants(t)``: the clients that trained after ``t`` (None: every member takes part).
        ``straggler_s``: once the clients taking part in a round have sent a phase (or half the members
        have), it closes this long after the last arrival at the latest (None: only ``timeout_s``).
        ``max_norm_ratio``: a round's average whose L2 norm exceeds this times the previous round's
        is rejected (as is a non-finite one); every client then keeps its own adapters. ``weights``:
        what the server ran for each client (None: the claims count, as before). ``guard``: the checks of
        the average (default: ``AverageGuard`` with ``max_norm_ratio`` and no trunk yardstick)."""
        self.weights = weights
        self.guard = guard or AverageGuard(max_norm_ratio=max_norm_ratio)
        self._members = members
        self._participants = participants
        self._straggler_s = straggler_s
        self._closed_at = float("-inf")  # when the last round closed (time.monotonic)
        self._timeout_s = timeout_s
        self._threshold = threshold
        self._condition = threading.Condition()
        self._round: _Round | None = None
        self._resumed_round = 0
        self.completed = 0

    @property
    def last_round(self) -> int:
        """The last round closed (averaged or failed); settable when resuming from a checkpoint."""
        with self._condition:
            current = self._round
            if current is None:
                return self._resumed_round
            return current.index if current.done else current.index - 1

    @last_round.setter
    def last_round(self, value: int) -> None:
        with self._condition:
            self._round = None
            self._resumed_round = value

    def submit(self, client: str, round_index: int, phase: int, value: Any) -> Any:
        """Hand in ``client``'s message for a phase; blocks until the phase closes and returns its answer
        for this client. Raises ``AggregationError`` when the message does not fit the round or the
        round fails."""
        if phase not in PHASE_NAMES:
            raise AggregationError(f"unknown secure-aggregation phase {phase}")
        with self._condition:
            current = self._open(client, round_index, phase)
            if phase == MASKED:
                self._collect_masked(current, client, value)
            current.submissions[client] = value
            current.last_arrival = time.monotonic()
            self._condition.notify_all()
            while phase not in current.results and current.error is None:
                if self._phase_complete(current) or time.monotonic() >= self._phase_deadline(current):
                    self._close_phase(current)
                    break
                self._condition.wait(0.2)
            if current.error is not None:
                raise AggregationError(current.error)
            return current.results[phase][client]

    # -- round state -------------------------------------------------------------------------------
    def _open(self, client: str, round_index: int, phase: int) -> _Round:
        current = self._round
        if phase == ADVERTISE and (current is None or current.done):
            last = self._resumed_round if current is None else current.index
            if round_index != last + 1:
                raise AggregationError(f"round {round_index} submitted while round {last + 1} is next")
            current = _Round(round_index, ADVERTISE, self._members() | {client},
                             time.monotonic() + self._timeout_s)
            self._round = current
            return current
        if current is None or current.index != round_index:
            open_index = "none" if current is None else current.index
            raise AggregationError(f"round {round_index} is not open (open round: {open_index})")
        if current.error is not None:
            raise AggregationError(current.error)
        if current.phase != phase:
            raise AggregationError(f"round {round_index} is at phase {current.phase} "
                                   f"({PHASE_NAMES[current.phase]}), not {phase}: too late for this round")
        if phase == ADVERTISE:
            current.expected.add(client)  # a client that connected since the round opened joins it
        if client not in current.expected:
            raise AggregationError(f"client {client!r} is not in round {round_index} (it missed an "
                                   "earlier phase)")
        if client in current.submissions:
            raise AggregationError(f"client {client!r} already sent phase {phase} of round {round_index}")
        return current

    def _phase_deadline(self, current: _Round) -> float:
        """The round deadline; or ``straggler_s`` after the last arrival once the clients taking part
        (trained since the last round, or announced it) have all sent the phase, or half the expected."""
        arrived = set(current.submissions)
        if self._straggler_s is None or not arrived:
            return current.deadline
        taking_part = current.expected  # after the first phase: those that announced the round
        if current.phase == ADVERTISE and self._participants is not None:
            taking_part = current.expected & self._participants(self._closed_at)
        if taking_part <= arrived or 2 * len(arrived) >= len(current.expected):
            return min(current.deadline, current.last_arrival + self._straggler_s)
        return current.deadline

    def _phase_complete(self, current: _Round) -> bool:
        live = current.expected & (self._members() | set(current.submissions))
        return live <= set(current.submissions)

    def _collect_masked(self, current: _Round, client: str, value: tuple[dict[str, torch.Tensor], float],
                        ) -> None:
        assert current.server is not None
        tensors, weight = value
        granted = current.granted.get(client)
        if granted is not None and not weight <= granted * (1 + 1e-9):
            current.expected.discard(client)  # left out, unmasked from the others' shares
            log.warning("round %d: %s claimed weight %.6g, more than the %.6g the server granted it (the "
                        "training rows it ran for it): its masked input is refused", current.index, client,
                        weight, granted)
            raise AggregationError(f"weight {weight:.6g} exceeds the {granted:.6g} this server granted "
                                   f"{client!r} in round {current.index} (the training rows it ran for it "
                                   "since its last round, capped): left out of the round")
        try:
            current.server.collect_masked(client, tensors, weight)
        except SecAggError as error:
            raise AggregationError(str(error)) from None

    def _close_phase(self, current: _Round) -> None:
        subs = current.submissions
        late = sorted(current.expected - set(subs))
        try:
            results, next_expected = self._run_phase(current)
        except SecAggError as error:
            current.error = f"round {current.index} failed at {PHASE_NAMES[current.phase]}: {error}"
            current.done = True
            self._closed_at = time.monotonic()
            log.warning("%s", current.error)
            self._condition.notify_all()
            return
        if late:
            log.warning("round %d, %s: left out %s (no message before the deadline)", current.index,
                        PHASE_NAMES[current.phase], ", ".join(late))
        current.results[current.phase] = results
        current.submissions = {}
        if current.phase == REVEAL or next_expected is None:
            current.done = True
            self.completed += 1
            self._closed_at = time.monotonic()
        else:
            current.phase += 1
            current.expected = next_expected
            current.deadline = time.monotonic() + self._timeout_s
        self._condition.notify_all()

    @property
    def max_norm_ratio(self) -> float | None:
        return self.guard.max_norm_ratio

    @property
    def previous_norm(self) -> float | None:
        return self.guard.previous_norm

    def status(self) -> dict[str, object]:
        return self.guard.status()

    def _check_average(self, average: dict[str, torch.Tensor]) -> None:
        """Check ``average`` as the next round's would be (``AverageGuard.check``)."""
        self.guard.check(self.last_round + 1, average)

    def _run_phase(self, current: _Round) -> tuple[dict[str, Any], set[str] | None]:
        subs = current.submissions
        if current.phase == ADVERTISE:
            if len(subs) == 1:
                (alone,) = subs
                log.info("round %d: %s is the only client; it keeps its own adapters", current.index, alone)
                return {alone: (b"", 0)}, None
            threshold = max(self._threshold or 0, majority_threshold(len(subs)))
            current.server = SecAggServer(os.urandom(16), threshold)
            roster: RoundRoster = current.server.collect_keys(subs)
            blob = roster.to_bytes()
            return {client: (blob, threshold) for client in subs}, set(subs)
        assert current.server is not None
        if current.phase == SHARE:
            routed = current.server.route_shares(subs)
            members = sorted(subs)
            current.granted = self.weights.grant(members) if self.weights is not None else {}
            return {client: (routed[client], current.granted.get(client, 0.0)) for client in members}, \
                set(subs)
        if current.phase == MASKED:
            survivors, dropped = current.server.unmask_request()
            return {client: (survivors, dropped) for client in survivors}, set(survivors)
        average, contributors = current.server.finish(subs)
        self.guard.check(current.index, average)
        log.info("round %d securely averaged over %s (the server saw only the sum)", current.index,
                 ", ".join(contributors))
        return {client: (average, len(contributors)) for client in subs}, None
