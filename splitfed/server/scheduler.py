"""Who may use the trunk next: one client step at a time, fair across clients.

A step holds the trunk from its training forward until its backward (or until it is abandoned).
With a roster the turns go round-robin in roster order among the clients that have joined, so a run
is reproducible whatever the network timing; without one, steps are served in arrival order, except
that a client with several requests waiting does not get two turns in a row while another client
waits (a flooding client gets at most every other turn).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

log = logging.getLogger(__name__)


class TurnTimeout(TimeoutError):
    """A client waited longer than allowed for its turn."""


class TurnScheduler:
    """Round-robin (with a roster) or first-come-first-served (without) access to the trunk."""

    def __init__(self, roster: list[str] | None = None, start_timeout_s: float = 60.0) -> None:
        self._roster = list(roster) if roster else None
        self._joined: list[str] = []
        self._ever_joined: set[str] = set()
        self._left: set[str] = set()
        self._holder: str | None = None
        self._last_holder: str | None = None
        self._next_index = 0
        self._queue: deque[str] = deque()
        self._condition = threading.Condition()
        self._start_deadline = time.monotonic() + start_timeout_s

    @property
    def holder(self) -> str | None:
        """The client whose step holds the trunk now."""
        return self._holder

    @property
    def position(self) -> int:
        """The round-robin position (index into the roster of the next turn); settable on resume."""
        with self._condition:
            return self._next_index

    @position.setter
    def position(self, value: int) -> None:
        with self._condition:
            self._next_index = value % len(self._roster) if self._roster else 0

    def join(self, client: str) -> None:
        """A client is connected and will ask for turns."""
        with self._condition:
            self._left.discard(client)
            self._ever_joined.add(client)
            if client not in self._joined:
                self._joined.append(client)
            self._condition.notify_all()

    def roster_finished(self) -> bool:
        """Whether every roster client has joined at some point and has now left."""
        with self._condition:
            return self._roster is not None and all(
                c in self._ever_joined and c in self._left for c in self._roster)

    def leave(self, client: str, finished: bool = True) -> None:
        """A client is gone (finished, disconnected or dropped); it gives up any turn it holds.
        ``finished`` False: it was interrupted and will resume, so the roster is not done with it."""
        with self._condition:
            if finished:
                self._left.add(client)
            if client in self._joined:
                self._joined.remove(client)
            if client in self._queue:
                self._queue.remove(client)
            if self._holder == client:
                self._release_locked(client)
            self._condition.notify_all()

    def acquire(self, client: str, timeout_s: float) -> None:
        """Block until it is ``client``'s turn; raise ``TurnTimeout`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            if self._holder == client:
                return
            if self._roster is None:
                self._queue.append(client)
            try:
                while not self._may_go(client):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TurnTimeout(f"{client} waited {timeout_s:.0f}s for its turn")
                    self._condition.wait(min(remaining, 0.5))
            except BaseException:
                if self._roster is None and client in self._queue:
                    self._queue.remove(client)
                raise
            if self._roster is None:
                self._queue.remove(client)
            self._holder = client

    def release(self, client: str, advance: bool = True) -> None:
        """``client``'s step is over; the next client may go. ``advance`` False: the step failed through
        the server's fault (a lost sub-server), so the round-robin turn stays ``client``'s for its retry."""
        with self._condition:
            if self._holder == client:
                position = self._next_index
                self._release_locked(client)
                if not advance:
                    self._next_index = position
            self._condition.notify_all()

    # -- internals (call with the condition held) ---------------------------------------------------
    def _release_locked(self, client: str) -> None:
        self._holder = None
        self._last_holder = client
        if self._roster is not None and client in self._roster:
            self._next_index = (self._roster.index(client) + 1) % len(self._roster)

    def _active_roster(self) -> list[str]:
        assert self._roster is not None
        return [c for c in self._roster if c in self._joined and c not in self._left]

    def _may_go(self, client: str) -> bool:
        if self._holder is not None:
            return False
        if self._roster is None:  # arrival order, but never the same client twice while another waits
            others = [c for c in self._queue if c != self._last_holder]
            return bool(self._queue) and (others[0] if others else self._queue[0]) == client
        if client not in self._roster:
            return False
        everyone_joined = all(c in self._joined or c in self._left for c in self._roster)
        if not everyone_joined and time.monotonic() < self._start_deadline:
            return False
        return self._next_turn() == client

    def _next_turn(self) -> str | None:
        """The first active roster client at or after the round-robin position."""
        assert self._roster is not None
        active = set(self._active_roster())
        for offset in range(len(self._roster)):
            candidate = self._roster[(self._next_index + offset) % len(self._roster)]
            if candidate in active:
                return candidate
        return None


def roster_slices(roster: list[str] | None, count: int) -> list[list[str] | None]:
    """The clients of each of ``count`` sub-servers: roster position modulo ``count``."""
    return [[n for i, n in enumerate(roster) if i % count == k] if roster else None for k in range(count)]
