"""A bounded cache of handshake nonces seen within the freshness window."""

from __future__ import annotations

import heapq
import threading

from splitfed.security.errors import ReplayError, StaleHandshakeError


class ReplayCache:
    """Remembers each nonce until its timestamp leaves the window `[now - window_s, now + window_s]`.

    When full it forgets the oldest nonce and from then on refuses every timestamp up to that nonce's
    (as stale), so a bounded cache never lets a replay through; it only fails closed under a flood.
    """

    def __init__(self, window_s: int, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: dict[bytes, int] = {}
        self._by_time: list[tuple[int, bytes]] = []
        self._floor = -1
        self._lock = threading.Lock()

    def check_and_add(self, nonce: bytes, timestamp: int, now: int) -> None:
        """Record `nonce`; `ReplayError` if seen, `StaleHandshakeError` if below the eviction floor."""
        with self._lock:
            self._expire(now)
            if nonce in self._seen:
                raise ReplayError("handshake nonce already used (replayed ClientHello)")
            if timestamp <= self._floor:
                raise StaleHandshakeError("handshake too old for the server's replay cache; retry")
            while len(self._seen) >= self.max_entries:
                evicted_time, evicted = heapq.heappop(self._by_time)
                del self._seen[evicted]
                self._floor = max(self._floor, evicted_time)
            if timestamp <= self._floor:
                raise StaleHandshakeError("handshake too old for the server's replay cache; retry")
            self._seen[nonce] = timestamp
            heapq.heappush(self._by_time, (timestamp, nonce))

    def _expire(self, now: int) -> None:
        while self._by_time and self._by_time[0][0] < now - self.window_s:
            _, nonce = heapq.heappop(self._by_time)
            del self._seen[nonce]

    def __len__(self) -> int:
        return len(self._seen)
