"""A server whose request threads are all busy refuses more at once, as a retryable busy error."""

from __future__ import annotations

import threading
import time

import pytest

from splitfed.security import Sealed
from splitfed.transport import pb
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve


class _Ticket:
    """Every request admitted, up to the transport's own limit."""

    max_bytes = 1 << 40

    def release(self) -> None:
        pass


class BlockingHandler:
    """Every handshake blocks until released, as a client waiting for its turn does."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def open_session(self, client_hello: bytes, base_id: str = "") -> bytes:
        self.entered.release()
        self.release.wait(30)
        return b"hello:" + client_hello

    def session_limits(self) -> pb.SessionLimits:
        return pb.SessionLimits()

    def admit(self, session_id: bytes, kind: str) -> _Ticket:
        return _Ticket()

    def handle(self, sealed: Sealed) -> Sealed:
        return sealed


def test_requests_beyond_the_threads_are_refused_as_busy_not_queued() -> None:
    handler = BlockingHandler()
    server, port = serve(handler, "127.0.0.1:0", allow_insecure_loopback=True, workers=4)
    address = f"127.0.0.1:{port}"
    results: list[bytes] = []
    try:
        def hold(index: int) -> None:
            connection = TrunkConnection(address, allow_insecure_loopback=True, timeout_s=30)
            results.append(connection.handshake(bytes([index])).server_hello)
            connection.close()

        holders = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
        for thread in holders:
            thread.start()
        for _ in range(4):
            assert handler.entered.acquire(timeout=10), "the four requests did not all start"
        extra = TrunkConnection(address, allow_insecure_loopback=True, timeout_s=30)
        started = time.monotonic()
        with pytest.raises(RemoteError) as refused:
            extra.handshake(b"x")
        assert time.monotonic() - started < 5, "the extra request was queued, not refused"
        assert refused.value.status == "UNAVAILABLE" and "busy" in str(refused.value)
        handler.release.set()
        for thread in holders:
            thread.join(10)
        assert sorted(results) == [b"hello:" + bytes([i]) for i in range(4)]
        handler.release.clear()
        threading.Timer(0.2, handler.release.set).start()
        assert extra.handshake(b"y").server_hello == b"hello:y"  # served once a thread is free
        extra.close()
    finally:
        handler.release.set()
        server.stop(0)
