"""Bytes that are no protobuf message, on every RPC of a live server: INVALID_ARGUMENT (parsed inside
the handler, not by gRPC's deserializer, which would answer INTERNAL), and the server serves on."""

from __future__ import annotations

import grpc
import pytest

from splitfed.transport.server import SERVICE_NAME
from tests.network.test_refusals import Lab

# a field header announcing a length-delimited field far longer than the message: no valid message
GARBAGE = [b"\x0a\xff\xff\xff\x7f", b"\xff" * 64, b"\x08"]


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    yield lab
    lab.server.stop(0)


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize("method", ["Handshake", "Exchange", "Close", "Step"])
def test_garbage_bytes_get_invalid_argument(lab, method, garbage):
    with grpc.insecure_channel(lab.address) as channel:
        path = f"/{SERVICE_NAME}/{method}"
        with pytest.raises(grpc.RpcError) as refused:
            if method == "Step":
                call = channel.stream_stream(path)
                list(call(iter([garbage]), timeout=10))
            else:
                channel.unary_unary(path)(garbage, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "malformed" in refused.value.details()


def test_the_server_serves_an_honest_client_after_garbage(lab):
    with grpc.insecure_channel(lab.address) as channel:
        for garbage in GARBAGE:
            with pytest.raises(grpc.RpcError):
                channel.unary_unary(f"/{SERVICE_NAME}/Handshake")(garbage, timeout=10)
    connection, secure = lab.session(lab.people["alice"])
    assert secure.session_id
    connection.close()
