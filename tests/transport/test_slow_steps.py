"""A step that takes longer than the stream idle deadline (waiting for its turn, computing) is answered,
not cancelled: the deadline bounds the gaps between a message's chunks, not the work after it."""

from __future__ import annotations

import threading
import time

from splitfed.security import Sealed
from splitfed.transport.admission import FrontDoorLimits
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.envelope import chunk_message
from splitfed.transport.server import serve

IDLE_S = 0.5


class _Ticket:
    max_bytes = 1 << 30

    def release(self) -> None:
        pass


class SlowHandler:
    """Answers every message with itself, after ``delay_s`` (a step waiting for its turn)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.handled = 0
        self.lock = threading.Lock()

    def open_session(self, client_hello: bytes, base_id: str = "") -> bytes:
        return client_hello

    def session_limits(self):
        from splitfed.transport import pb

        return pb.SessionLimits()

    def admit(self, session_id: bytes, kind: str) -> _Ticket:
        return _Ticket()

    def handle(self, sealed: Sealed) -> Sealed:
        time.sleep(self.delay_s)
        with self.lock:
            self.handled += 1
        return sealed


def test_a_multi_chunk_step_slower_than_the_idle_deadline_is_answered():
    handler = SlowHandler(delay_s=4 * IDLE_S)
    server, port = serve(handler, "127.0.0.1:0", allow_insecure_loopback=True, workers=4,
                         front_door=FrontDoorLimits(first_message_s=IDLE_S, idle_s=IDLE_S))
    connection = TrunkConnection(f"127.0.0.1:{port}", allow_insecure_loopback=True, timeout_s=30)
    try:
        message = Sealed(session_id=b"s" * 16, kind="forward", step=1, counter=1,
                         ciphertext=bytes(range(256)) * 40)
        chunks = chunk_message(message, chunk_bytes=1024)
        assert len(chunks) == 10
        started = time.monotonic()
        reply = connection.exchange_chunks(chunks)  # before the fix: CANCELLED after IDLE_S
        assert time.monotonic() - started >= 4 * IDLE_S
        assert reply.ciphertext == message.ciphertext and handler.handled == 1
    finally:
        connection.close()
        server.stop(0)
