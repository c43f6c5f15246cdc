"""The front door: what a peer may hold before it has proven who it is, and for how long.

* **Streams waiting for their first message** hold a request thread and nothing else: at most
  ``unauthenticated_streams`` of them at once, ``unauthenticated_per_peer`` per peer address. A new
  stream beyond either bound evicts (cancels) the oldest waiting one, so idle streams cannot fill the
  thread pool, and a client that sends its first chunk at once (every honest one) is never affected.
* **Deadlines**: ``first_message_s`` for a stream's first chunk, ``idle_s`` between later chunks; a
  stream past its deadline is cancelled (the peer sees ``CANCELLED``).
* **Handshakes** per peer address are rate limited (token bucket) before any signature is checked.
* **Sessions** (``SessionGate``): what one authenticated client may hold: requests in flight, request
  rate, bytes per message. The transport asks ``SessionGate.admit`` on a message's first chunk, before
  it buffers the rest, so a made-up session id costs one small read, and an enrolled client cannot hold
  more than its share of request threads or memory, or flood steps past its rate (it is told it is
  busy and backs off).

Everything here is transport-free bookkeeping except the cancel callables it is handed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from splitfed.transport.errors import ServiceError


@dataclass(frozen=True)
class FrontDoorLimits:
    """Bounds on peers before authentication (see the module docstring)."""

    unauthenticated_streams: int = 8
    unauthenticated_per_peer: int = 4
    first_message_s: float = 5.0
    idle_s: float = 15.0
    handshakes_per_s: float = 20.0
    handshake_burst: int = 40


def peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``ipv4:127.0.0.1``; ``ipv6:[::1]:5000`` -> ``ipv6:[::1]``."""
    host, _, port = peer.rpartition(":")
    return host if host and port.isdigit() else peer


class Deadlines:
    """One watchdog thread that cancels streams whose deadline passed."""

    def __init__(self, tick_s: float = 0.1) -> None:
        self._deadlines: dict[int, tuple[float, Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._tick = tick_s
        self._thread = threading.Thread(target=self._run, name="stream-deadlines", daemon=True)
        self._thread.start()

    def watch(self, seconds: float, cancel: Callable[[], None]) -> int:
        with self._lock:
            self._next += 1
            self._deadlines[self._next] = (time.monotonic() + seconds, cancel)
            return self._next

    def extend(self, token: int, seconds: float) -> None:
        with self._lock:
            if token in self._deadlines:
                self._deadlines[token] = (time.monotonic() + seconds, self._deadlines[token][1])

    def done(self, token: int) -> None:
        with self._lock:
            self._deadlines.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                expired = [(t, c) for t, (d, c) in self._deadlines.items() if d <= now]
                for token, _ in expired:
                    del self._deadlines[token]
            for _, cancel in expired:
                cancel()


class WaitingStreams:
    """Streams not yet authenticated, oldest first; bounded overall and per peer by eviction."""

    def __init__(self, total: int, per_peer: int) -> None:
        if total < 1 or per_peer < 1:
            raise ValueError("the bounds on unauthenticated streams must be >= 1")
        self.total, self.per_peer = total, per_peer
        self._streams: OrderedDict[int, tuple[str, Callable[[], None]]] = OrderedDict()
        self._per_peer: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._next = 0
        self.evicted = 0

    def enter(self, peer: str, cancel: Callable[[], None]) -> int:
        """Register a waiting stream; evicts the oldest ones past the bounds. Returns its token."""
        victims: list[Callable[[], None]] = []
        with self._lock:
            while self._per_peer[peer] >= self.per_peer:
                victims.append(self._evict(next(t for t, (p, _) in self._streams.items() if p == peer)))
            while len(self._streams) >= self.total:
                victims.append(self._evict(next(iter(self._streams))))
            self._next += 1
            self._streams[self._next] = (peer, cancel)
            self._per_peer[peer] += 1
            token = self._next
        for cancel_victim in victims:
            cancel_victim()
        return token

    def _evict(self, token: int) -> Callable[[], None]:
        self.evicted += 1
        return self._remove(token)

    def _remove(self, token: int) -> Callable[[], None]:
        peer, cancel = self._streams.pop(token)
        self._per_peer[peer] -= 1
        if not self._per_peer[peer]:
            del self._per_peer[peer]
        return cancel

    def leave(self, token: int) -> None:
        """The stream got its first message, ended, or was evicted (then this does nothing)."""
        with self._lock:
            if token in self._streams:
                self._remove(token)

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)


class TokenBuckets:
    """A token bucket per key: ``rate`` tokens a second up to ``burst``; ``take`` says whether one was
    left. The table is bounded: the fullest buckets (idle keys) are forgotten first."""

    def __init__(self, rate: float, burst: int, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self._clock = rate, burst, max_keys, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > self.max_keys:
                oldest = min(self._buckets, key=lambda k: self._buckets[k][1])
                del self._buckets[oldest]
            return allowed


class RefusalLog:
    """Warnings about refused peers, at most ``per_s`` lines a second (a flood must not flood the log);
    the next line that gets through says how many were suppressed."""

    def __init__(self, logger: logging.Logger, per_s: float = 5.0, burst: int = 10) -> None:
        self.logger = logger
        self._bucket = TokenBuckets(per_s, burst)
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: object) -> None:
        if not self._bucket.take("log"):
            with self._lock:
                self._suppressed += 1
            return
        with self._lock:
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            message += f" ({suppressed} similar lines suppressed)"
        self.logger.warning(message, *args)


# ------------------------------------------------------------------------------ one session's share

CLIENT_KINDS = frozenset({"forward", "backward", "loss", "generate", "aggregate", "secagg", "close"})
TENSOR_KINDS = frozenset({"forward", "backward", "loss", "generate"})
FRAMING_BYTES = 64 * 1024  # protobuf fields, AEAD tag, header: generous


@dataclass
class Ticket:
    """One admitted request: the bytes it may carry; ``release`` once served (idempotent)."""

    max_bytes: int
    _gate: SessionGate
    _name: str
    _released: bool = field(default=False)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate.done(self._name)


class SessionGate:
    """Per client: at most ``in_flight`` requests at once and ``rate`` a second (burst ``burst``)."""

    def __init__(self, tensor_bytes: int, adapter_bytes: int, max_message_bytes: int, in_flight: int = 4,
                 rate: float = 200.0, burst: int = 400) -> None:
        self.limits = {kind: min(max_message_bytes, (tensor_bytes if kind in TENSOR_KINDS else
                                                     adapter_bytes if kind != "close" else 0) + FRAMING_BYTES)
                       for kind in CLIENT_KINDS}
        self.in_flight = in_flight
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._rates = TokenBuckets(rate, burst)

    def admit(self, name: str, kind: str) -> Ticket:
        """Admit one request of ``kind`` from client ``name`` or refuse it with a precise status."""
        if kind not in CLIENT_KINDS:
            raise ServiceError("INVALID_ARGUMENT", "bad_kind", f"a client may not send {kind[:32]!r}")
        if not self._rates.take(name):
            raise ServiceError("RESOURCE_EXHAUSTED", "rate_limited",
                               "busy: more requests a second than a client may send; retry later")
        with self._lock:
            if self._counts.get(name, 0) >= self.in_flight:
                raise ServiceError("RESOURCE_EXHAUSTED", "too_many_in_flight",
                                   f"busy: {self.in_flight} requests of this client are already in flight")
            self._counts[name] = self._counts.get(name, 0) + 1
        return Ticket(self.limits[kind], self, name)

    def done(self, name: str) -> None:
        with self._lock:
            self._counts[name] -= 1
            if not self._counts[name]:
                del self._counts[name]
