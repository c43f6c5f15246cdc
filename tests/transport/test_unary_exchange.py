"""The transport chooses: a message that fits one gRPC message and whose reply is no larger (a tensor
step) goes as one unary Exchange call; larger ones, and kinds whose replies may be larger, stream in
chunks. Both reach the same handler and return the same reply; Exchange refuses what is not one whole
message; a refusal's code reaches the client typed."""

from __future__ import annotations

import grpc
import pytest

from splitfed.security import Sealed
from splitfed.transport import pb
from splitfed.transport import splitfed_pb2_grpc as pb_grpc
from splitfed.transport.chunking import DEFAULT_CHUNK_BYTES
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.envelope import to_wire
from splitfed.transport.errors import RemoteError, ServiceError
from splitfed.transport.server import serve


class _Ticket:
    """Every request admitted, up to the transport's own limit."""

    max_bytes = 1 << 40

    def release(self) -> None:
        pass


class EchoHandler:
    """Replies with the request's ciphertext reversed; records every request it saw."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def open_session(self, client_hello: bytes, base_id: str = "") -> bytes:
        return client_hello

    def session_limits(self) -> pb.SessionLimits:
        return pb.SessionLimits()

    def admit(self, session_id: bytes, kind: str) -> _Ticket:
        return _Ticket()

    def handle(self, sealed: Sealed) -> Sealed:
        self.seen.append(len(sealed.ciphertext))
        if sealed.kind == "refuse":
            raise ServiceError("FAILED_PRECONDITION", "stale_cache", "the stream's cache expired")
        return Sealed(session_id=sealed.session_id, kind=sealed.kind + "_reply", step=sealed.step,
                      counter=sealed.counter, ciphertext=bytes(reversed(sealed.ciphertext)))


@pytest.fixture
def server():
    handler = EchoHandler()
    grpc_server, port = serve(handler, "127.0.0.1:0", allow_insecure_loopback=True, workers=4)
    yield handler, f"127.0.0.1:{port}"
    grpc_server.stop(0)


def _message(size: int, kind: str = "forward") -> Sealed:
    return Sealed(session_id=b"s" * 16, kind=kind, step=3, counter=5,
                  ciphertext=bytes(i % 251 for i in range(size)))


@pytest.mark.parametrize("size", [10, DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_BYTES + 1, 3 * DEFAULT_CHUNK_BYTES])
@pytest.mark.parametrize(("kind", "layout", "unary_kind"), [("forward", "three-part", True),
                                                             ("aggregate", "three-part", False),
                                                             ("generate", "three-part", True),
                                                             ("generate", "two-part", False)])
def test_unary_and_streamed_exchanges_agree(server, size, kind, layout, unary_kind, monkeypatch):
    handler, address = server
    connection = TrunkConnection(address, allow_insecure_loopback=True, timeout_s=30)
    connection.layout = layout  # as the handshake would have set it
    streamed = []
    original = connection.exchange_chunks
    monkeypatch.setattr(connection, "exchange_chunks", lambda chunks: streamed.append(1) or original(chunks))
    message = _message(size, kind)
    reply = connection.exchange(message)
    connection.close()
    assert isinstance(reply, Sealed) and reply.ciphertext == bytes(reversed(message.ciphertext))
    assert (reply.kind, reply.step, reply.counter) == (f"{kind}_reply", 3, 5)
    assert handler.seen == [size]
    assert bool(streamed) == (not unary_kind or size > DEFAULT_CHUNK_BYTES)


@pytest.mark.parametrize("size", [10, 3 * DEFAULT_CHUNK_BYTES])  # unary and streamed
def test_a_refusal_reaches_the_client_with_its_typed_code(server, size):
    _, address = server
    connection = TrunkConnection(address, allow_insecure_loopback=True, timeout_s=30)
    with pytest.raises(RemoteError) as refused:
        connection.exchange(_message(size, "refuse"))
    connection.close()
    assert refused.value.status == "FAILED_PRECONDITION" and refused.value.code == "stale_cache"
    assert "expired" in refused.value.message


def test_exchange_refuses_a_chunk_of_a_larger_message(server):
    handler, address = server
    channel = grpc.insecure_channel(address)
    part = to_wire(_message(10))
    part.chunk_count = 2
    with pytest.raises(grpc.RpcError) as refused:
        pb_grpc.TrunkStub(channel).Exchange(part, timeout=10)
    channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad_chunk" in refused.value.details()
    assert handler.seen == []


def test_a_call_the_stopping_server_cancelled_is_reported_as_retryable():
    from splitfed.transport.connection import _remote_error

    class Cancelled(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.CANCELLED

        def details(self):
            return "CANCELLED"

    error = _remote_error(Cancelled(), "127.0.0.1:1")
    assert error.status == "UNAVAILABLE" and "retry" in str(error) and error.code == "cancelled"
