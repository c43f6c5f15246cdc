"""What one authenticated session may hold: requests in flight, request rate, bytes per message.

The transport asks ``SessionGate.admit`` on a message's first chunk, before it buffers the rest, so
a made-up session id costs one small read, and an enrolled client cannot hold more than its share of
request threads or memory, or flood steps past its rate (it is told it is busy and backs off).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from splitfed.transport.admission import TokenBuckets
from splitfed.transport.errors import ServiceError

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
