"""Attacks and malformed input get a precise status; the server keeps serving the honest client."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk, TrunkMismatchError
from splitfed.models import LoraSpec, init_adapter, load_model, split_model
from splitfed.models.split import Partition
from splitfed.security import (
    AllowList,
    ClientHandshake,
    Identity,
    SecureChannel,
    ServerHandshake,
    ServerHello,
)
from splitfed.server import LocalTrunk
from splitfed.server.gradient_guard import GradientGuardSettings
from splitfed.server.modes import SequentialMode
from splitfed.server.trunk_service import ServiceLimits, TrunkService
from splitfed.training.replicate import replicate
from splitfed.transport import INT8_BLOCKWISE, encode_tensor, mask_to_lengths, pb
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve
from tests.conftest import make_batch

HIDDEN = 64


class Lab:
    """A live trunk server on 127.0.0.1 with enrolled identities, plus helpers to attack it."""

    def __init__(self, limits: ServiceLimits | None = None,
                 gradient_guard: GradientGuardSettings | None = None) -> None:
        self.model, _ = load_model("tiny-llama")
        self.server_identity = Identity.generate("server")
        self.people = {name: Identity.generate(name) for name in ("alice", "mallory")}
        allow = AllowList([identity.public for identity in self.people.values()])
        split = split_model(replicate(self.model), Partition(1, 1))
        init_adapter(split.trunk, LoraSpec(r=4), 0)
        limits = limits or ServiceLimits(max_batch=8, max_length=64, step_timeout_s=2.0, turn_timeout_s=20.0)
        self.service = TrunkService(SequentialMode(LocalTrunk(split.trunk)),
                                    ServerHandshake(self.server_identity, allow),
                                    limits=limits, gradient_guard=gradient_guard)
        self.server, port = serve(self.service, "127.0.0.1:0", allow_insecure_loopback=True)
        self.address = f"127.0.0.1:{port}"

    def connection(self) -> TrunkConnection:
        return TrunkConnection(self.address, allow_insecure_loopback=True, timeout_s=30)

    def session(self, identity: Identity) -> tuple[TrunkConnection, SecureChannel]:
        connection = self.connection()
        handshake = ClientHandshake(identity, self.server_identity.public)
        reply = connection.handshake(handshake.hello().to_bytes())
        return connection, SecureChannel(handshake.finish(ServerHello.from_bytes(reply.server_hello)))

    def honest_client(self, name: str = "alice") -> SplitClient:
        split = split_model(replicate(self.model), Partition(1, 1))
        init_adapter(split.head, LoraSpec(r=4), 0)
        init_adapter(split.tail, LoraSpec(r=4), 0)
        remote = RemoteTrunk(self.connection(), self.people[name], self.server_identity.public)
        remote.connect((1, 3), HIDDEN)
        return SplitClient(name, split.head, split.tail, remote)


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    yield lab
    lab.server.stop(0)


def _forward(step: int, hidden: pb.Tensor, batch: int = 2, length: int = 5) -> pb.ForwardRequest:
    mask = torch.ones(batch, length, dtype=torch.long)
    return pb.ForwardRequest(step=step, hidden=hidden, lengths=mask_to_lengths(mask), train=True)


def _send(connection, channel, kind: str, step: int, message) -> bytes:
    sealed = channel.seal(kind, step, message.SerializeToString())
    return channel.open(connection.exchange(sealed))


def test_unknown_client_is_refused(lab):
    stranger = Identity.generate("stranger")
    with pytest.raises(RemoteError) as caught:
        lab.session(stranger)
    assert caught.value.status == "PERMISSION_DENIED" and "unknown_client" in caught.value.message


def test_replayed_handshake_is_refused(lab):
    connection = lab.connection()
    hello = ClientHandshake(lab.people["alice"], lab.server_identity.public).hello().to_bytes()
    connection.handshake(hello)
    with pytest.raises(RemoteError) as caught:
        connection.handshake(hello)
    assert caught.value.status == "UNAUTHENTICATED"


def test_tampered_replayed_and_cross_session_messages_are_refused(lab):
    connection, channel = lab.session(lab.people["alice"])
    request = _forward(1, encode_tensor(torch.randn(2, 5, HIDDEN)))
    request.train = False
    sealed = channel.seal("forward", 1, request.SerializeToString())
    tampered = replace(sealed, ciphertext=bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:])
    with pytest.raises(RemoteError) as caught:
        connection.exchange(tampered)
    assert caught.value.status == "UNAUTHENTICATED" and "bad_ciphertext" in caught.value.message
    connection.exchange(sealed)  # the genuine message still works
    with pytest.raises(RemoteError) as caught:
        connection.exchange(sealed)  # ... once
    assert "replayed" in caught.value.message

    other_connection, other_channel = lab.session(lab.people["mallory"])
    injected = replace(channel.seal("forward", 2, request.SerializeToString()),
                       session_id=other_channel.session_id)
    with pytest.raises(RemoteError) as caught:
        other_connection.exchange(injected)
    assert caught.value.status == "UNAUTHENTICATED"


def test_a_peer_client_cannot_decrypt_another_clients_traffic(lab):
    connection, alice = lab.session(lab.people["alice"])
    _, mallory = lab.session(lab.people["mallory"])
    request = _forward(1, encode_tensor(torch.randn(2, 5, HIDDEN)))
    request.train = False
    captured_request = alice.seal("forward", 1, request.SerializeToString())
    captured_reply = connection.exchange(captured_request)
    from splitfed.security import SecurityError

    for captured in (captured_request, captured_reply):
        with pytest.raises(SecurityError):
            mallory.open(captured)
        forged = type(captured)(mallory.session_id, captured.kind, captured.step, captured.counter,
                                captured.ciphertext)
        with pytest.raises(SecurityError):
            mallory.open(forged)


BAD_TENSORS = {
    "wrong shape": (encode_tensor(torch.randn(2, 5, HIDDEN + 1)), "INVALID_ARGUMENT", "bad_shape"),
    "wrong dtype": (pb.Tensor(dtype="int64", shape=[2, 5, HIDDEN], data=b"\0" * 8 * 2 * 5 * HIDDEN),
                    "INVALID_ARGUMENT", "bad_dtype"),
    "NaN": (encode_tensor(torch.full((2, 5, HIDDEN), float("nan"))), "INVALID_ARGUMENT", "not_finite"),
    "oversized": (pb.Tensor(dtype="float32", shape=[9, 64, HIDDEN], data=b""), "RESOURCE_EXHAUSTED",
                  "too_large"),
    "short data": (pb.Tensor(dtype="float32", shape=[2, 5, HIDDEN], data=b"\0" * 16), "INVALID_ARGUMENT",
                   "bad_length"),
    "int8 scale count": (pb.Tensor(dtype=INT8_BLOCKWISE, shape=[2, 5, HIDDEN], data=b"\0" * 2 * 5 * HIDDEN,
                                   scales=b"\0" * 4 * 9, block_size=64), "INVALID_ARGUMENT", "bad_scales"),
    "int8 NaN scale": (pb.Tensor(dtype=INT8_BLOCKWISE, shape=[2, 5, HIDDEN], data=b"\0" * 2 * 5 * HIDDEN,
                                 scales=b"\0\0\xc0\x7f" * 10, block_size=64),
                       "INVALID_ARGUMENT", "not_finite"),
    "unknown codec": (pb.Tensor(dtype="int4-blockwise", shape=[2, 5, HIDDEN], data=b"\0" * 2 * 5 * HIDDEN),
                      "INVALID_ARGUMENT", "bad_dtype"),
}


def test_malformed_tensors_are_refused_while_an_honest_client_trains(lab):
    honest = lab.honest_client()
    losses: list[float] = []
    errors: list[BaseException] = []

    def train() -> None:
        try:
            for step in range(12):
                losses.append(honest.train_step(make_batch(batch=2, length=10, seed=step)))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    worker = threading.Thread(target=train)
    worker.start()
    connection, channel = lab.session(lab.people["mallory"])
    for step, (name, (tensor, status, code)) in enumerate(BAD_TENSORS.items(), start=1):
        batch, length = (tensor.shape[0], tensor.shape[1]) if len(tensor.shape) >= 2 else (2, 5)
        with pytest.raises(RemoteError) as caught:
            _send(connection, channel, "forward", step, _forward(step, tensor, batch, length))
        assert caught.value.status == status and code in caught.value.message, name
    worker.join(120)
    assert not errors and len(losses) == 12
    assert all(torch.isfinite(torch.tensor(losses)))


def test_backward_without_forward_and_bad_gradient_are_refused(lab):
    connection, channel = lab.session(lab.people["mallory"])
    grad = pb.BackwardRequest(step=1, grad=encode_tensor(torch.randn(2, 5, HIDDEN)))
    with pytest.raises(RemoteError) as caught:
        _send(connection, channel, "backward", 1, grad)
    assert "no_open_step" in caught.value.message
    reply = _send(connection, channel, "forward", 2, _forward(2, encode_tensor(torch.randn(2, 5, HIDDEN))))
    assert reply
    bad = pb.BackwardRequest(step=2, grad=encode_tensor(torch.randn(2, 6, HIDDEN)))
    with pytest.raises(RemoteError) as caught:
        _send(connection, channel, "backward", 2, bad)
    assert "bad_shape" in caught.value.message
    assert lab.service.scheduler.holder is None  # the refused step gave its turn back


def test_a_client_that_vanishes_mid_step_is_freed(lab):
    connection, channel = lab.session(lab.people["mallory"])
    _send(connection, channel, "forward", 1, _forward(1, encode_tensor(torch.randn(2, 5, HIDDEN))))
    key = channel.session_id.hex()
    assert key in lab.service.trunk.pending()
    time.sleep(2.2)  # step_timeout_s = 2
    lab.service.reap()
    assert key not in lab.service.trunk.pending() and lab.service.scheduler.holder is None


def test_a_client_refusing_the_served_trunk_closes_its_session(lab):
    remote = RemoteTrunk(lab.connection(), lab.people["mallory"], lab.server_identity.public)
    with pytest.raises(TrunkMismatchError, match="blocks"):
        remote.connect((2, 3), HIDDEN)
    assert "mallory" not in lab.service.sessions()  # freed now, not after the session's time-to-live
    remote = RemoteTrunk(lab.connection(), lab.people["mallory"], lab.server_identity.public)
    with pytest.raises(TrunkMismatchError, match="layout"):
        remote.connect((1, 3), HIDDEN, layout="two-part")
    assert "mallory" not in lab.service.sessions()
