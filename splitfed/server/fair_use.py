"""Fair use of the trunk: how long a training step may wait for its backward, and what befalls a client
that keeps leaving steps open.

A training forward holds its sub-server's turn until its backward comes. The deadline for that backward
follows the measured step time: ``factor`` x a reference interval, never below ``floor_s`` nor above
``cap_s`` (``step_timeout_s``). The reference is the median over clients of each client's median
forward->backward interval of its recent completed steps (the lower middle value: one client, one vote,
so a single client cannot stretch everyone's deadline by answering slowly; the floor keeps a client that
answers fast from squeezing the others'). Until a step has completed, the deadline is the cap.

A step dropped at its deadline is a held step. A client's next training forward after a held step waits
``4**n`` deadlines from the drop (n: its held steps within ``window_s``), so that it holds the trunk at
most a fifth of the time; at ``suspend_after`` held steps within the window it is suspended for
``suspension_s``: its training forwards are refused (PERMISSION_DENIED "suspended"). Strikes and
suspensions belong to the client's name, so a new session does not clear them.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from splitfed.transport.errors import ServiceError

log = logging.getLogger(__name__)

RECENT_STEPS = 16  # completed steps per client the deadline looks at
PENALTY_BASE = 4  # after its n-th held step, a client's next training step waits PENALTY_BASE**n deadlines


@dataclass(frozen=True)
class FairUseLimits:
    """The bounds of ``FairUse`` (``ServiceLimits`` carries them from the server settings)."""

    floor_s: float = 5.0
    factor: float = 10.0
    cap_s: float = 60.0
    suspend_after: int = 4
    window_s: float = 600.0
    suspension_s: float = 900.0


class FairUse:
    """Step deadlines from measured step times; held steps slow a client down, then suspend it."""

    def __init__(self, limits: FairUseLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._intervals: dict[str, deque[float]] = {}
        self._held: dict[str, deque[float]] = {}  # client -> times of its held steps within the window
        self._not_before: dict[str, float] = {}  # client -> when its next training forward may start
        self._suspended: dict[str, float] = {}  # client -> end of its suspension

    # -- deadlines ---------------------------------------------------------------------------------
    def completed(self, client: str, seconds: float) -> None:
        """A training step of ``client`` took ``seconds`` from its forward to its backward."""
        with self._lock:
            self._intervals.setdefault(client, deque(maxlen=RECENT_STEPS)).append(max(0.0, seconds))

    def reference_s(self) -> float | None:
        """The step time deadlines follow (None before any step completed)."""
        with self._lock:
            medians = [statistics.median(v) for v in self._intervals.values() if v]
        return statistics.median_low(medians) if medians else None

    def deadline_s(self) -> float:
        """How long a training step may wait for its backward now."""
        reference = self.reference_s()
        limits = self.limits
        if reference is None:
            return limits.cap_s
        return min(limits.cap_s, max(limits.floor_s, limits.factor * reference))

    # -- held steps --------------------------------------------------------------------------------
    def held(self, client: str, deadline_s: float) -> int:
        """``client`` left a step open past ``deadline_s``: record it, slow the client down or suspend
        it; returns its held steps within the window."""
        now = self._clock()
        with self._lock:
            strikes = self._recent_held(client, now)
            strikes.append(now)
            count = len(strikes)
            if count >= self.limits.suspend_after:
                self._suspended[client] = now + self.limits.suspension_s
                self._not_before.pop(client, None)
                strikes.clear()
                log.warning("%s suspended for %.0fs: %d training steps left without their backward within "
                            "%.0fs", client, self.limits.suspension_s, count, self.limits.window_s)
            else:
                self._not_before[client] = now + deadline_s * PENALTY_BASE**count
        return count

    def _recent_held(self, client: str, now: float) -> deque[float]:
        strikes = self._held.setdefault(client, deque())
        while strikes and now - strikes[0] > self.limits.window_s:
            strikes.popleft()
        return strikes

    def suspended_s(self, client: str) -> float:
        """Seconds of suspension ``client`` has left (0: not suspended)."""
        with self._lock:
            return self._suspension_left(client, self._clock())

    def _suspension_left(self, client: str, now: float) -> float:
        end = self._suspended.get(client)
        if end is None:
            return 0.0
        if now >= end:
            del self._suspended[client]
            return 0.0
        return end - now

    def admit_training(self, client: str, wait_limit_s: float,
                       sleep: Callable[[float], None] = time.sleep) -> None:
        """Before ``client``'s training forward takes a turn: refuse it while suspended; after a held
        step, wait (as a busy trunk makes it wait) until its penalty is over, at most ``wait_limit_s``,
        then refuse it as busy (the client retries)."""
        now = self._clock()
        with self._lock:
            left = self._suspension_left(client, now)
            wait = self._not_before.get(client, now) - now
        if left > 0:
            raise ServiceError("PERMISSION_DENIED", "suspended",
                               f"{client} is suspended for {left:.0f}s more: it left too many training steps "
                               "without their backward")
        if wait <= 0:
            return
        sleep(min(wait, wait_limit_s))
        if wait > wait_limit_s:
            raise ServiceError("UNAVAILABLE", "busy", f"{client} is slowed down after training steps left "
                               f"without their backward: retry in {wait - wait_limit_s:.0f}s")

    def status(self) -> dict[str, object]:
        """The deadline now, held steps within the window and suspensions left, per client."""
        now = self._clock()
        with self._lock:
            held = {c: len(self._recent_held(c, now)) for c in list(self._held)}
            suspended = {c: round(self._suspension_left(c, now), 1) for c in list(self._suspended)}
        return {"step_deadline_s": round(self.deadline_s(), 3),
                "held_steps": {c: n for c, n in held.items() if n},
                "suspended": {c: s for c, s in suspended.items() if s > 0}}
