"""A training step in pipelined micro-batches equals the whole-batch step, in process and over the network,
and the server refuses micro-batches that break the protocol."""

from __future__ import annotations

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk, TrunkMismatchError
from splitfed.endpoints import MicroBatch
from splitfed.models import LoraSpec, Partition, adapter_state, init_adapter, load_model, split_model
from splitfed.security import (
    AllowList,
    ClientHandshake,
    Identity,
    SecureChannel,
    ServerHandshake,
    ServerHello,
)
from splitfed.server import LocalTrunk
from splitfed.server.modes import SequentialMode
from splitfed.server.trunk_service import ServiceLimits, TrunkService
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from splitfed.transport import encode_tensor, mask_to_lengths, pb
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve
from tests.conftest import make_batch

SPEC = LoraSpec(r=4, alpha=8)
OPTIMIZER = OptimizerSettings(lr=1e-2)
HIDDEN = 64


@pytest.fixture(scope="module")
def base():
    return load_model("tiny-llama")[0]


def _split(base):
    split = split_model(replicate(base), Partition(1, 1))
    for part in split.parts.values():
        init_adapter(part, SPEC, 7)
    return split


def _batches() -> list[dict]:
    batches = [make_batch(batch=5, length=9 + i, seed=i) for i in range(3)]
    batches[1]["labels"][2] = -100  # a row with nothing to learn: its micro-batch has no loss
    return batches


def _adapters(split) -> dict[str, torch.Tensor]:
    return {f"{role}/{k}": v for role, part in split.parts.items() for k, v in adapter_state(part).items()}


def _assert_same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    worst = max(float((left[k] - right[k]).abs().max()) for k in left)
    assert worst <= 1e-5, worst


def _train(base, micro_batches: int) -> tuple[list[float], dict[str, torch.Tensor], int]:
    split = _split(base)
    trunk = LocalTrunk(split.trunk, OPTIMIZER)
    client = SplitClient("c", split.head, split.tail, trunk, OPTIMIZER, micro_batches=micro_batches)
    losses = [client.train_step(batch) for batch in _batches()]
    return losses, _adapters(split), trunk.steps


@pytest.mark.parametrize("micro_batches", [2, 5])
def test_micro_batched_steps_equal_whole_batch_steps_in_process(base, micro_batches):
    whole_losses, whole, whole_steps = _train(base, 1)
    losses, adapters, steps = _train(base, micro_batches)
    assert torch.allclose(torch.tensor(losses), torch.tensor(whole_losses), atol=1e-5)
    _assert_same(adapters, whole)
    assert steps == whole_steps == 3  # one trunk step per training step, not per micro-batch
    moved = _adapters(_split(base))
    assert max(float((adapters[k] - moved[k]).abs().max()) for k in moved) > 1e-3  # it trained


def test_a_defense_or_a_trunk_without_micro_batches_is_refused(base):
    from splitfed.privacy import PrivacySettings, SplitDefense

    split = _split(base)
    trunk = LocalTrunk(split.trunk, OPTIMIZER)
    defense = SplitDefense(PrivacySettings(forward={"clip": 1.0, "sigma": 0.1}), hidden_size=HIDDEN)
    with pytest.raises(ValueError, match="privacy defense"):
        SplitClient("c", split.head, split.tail, trunk, OPTIMIZER, defense=defense, micro_batches=2)

    class OneForward:
        def forward(self, client_id, hidden, attention_mask, train=True, labelled_tokens=0):
            return hidden

        def backward(self, client_id, grad_output):
            return grad_output

    from splitfed.client.two_part_client import TwoPartClient

    with pytest.raises(ValueError, match="two-part client sends a step in one message"):
        TwoPartClient("c", split.head, split.tail, trunk, OPTIMIZER, micro_batches=2)
    client = SplitClient("c", split.head, split.tail, OneForward(), OPTIMIZER, micro_batches=2)
    with pytest.raises(ValueError, match="OneForward takes a step in one forward only"):
        client.train_step(make_batch(batch=2))
    assert all(p.grad is None for p in split.head.parameters())  # the failed step left nothing behind


class Server:
    """A sequential trunk server on 127.0.0.1 with two enrolled clients."""

    def __init__(self, base, mode=None) -> None:
        self.split = _split(base)
        self.identity = Identity.generate("server")
        self.people = {name: Identity.generate(name) for name in ("alice", "mallory")}
        self.trunk = LocalTrunk(self.split.trunk, OPTIMIZER)
        limits = ServiceLimits(max_batch=8, max_length=64, step_timeout_s=30.0, turn_timeout_s=30.0)
        self.service = TrunkService(mode or SequentialMode(self.trunk),
                                    ServerHandshake(self.identity, AllowList([p.public for p in
                                                                              self.people.values()])),
                                    limits=limits)
        self.server, port = serve(self.service, "127.0.0.1:0", allow_insecure_loopback=True)
        self.address = f"127.0.0.1:{port}"

    def remote(self, name: str, micro_batches: int = 1) -> RemoteTrunk:
        connection = TrunkConnection(self.address, allow_insecure_loopback=True, timeout_s=60)
        remote = RemoteTrunk(connection, self.people[name], self.identity.public)
        remote.connect((1, 3), HIDDEN, micro_batches=micro_batches)
        return remote

    def session(self, name: str) -> tuple[TrunkConnection, SecureChannel]:
        connection = TrunkConnection(self.address, allow_insecure_loopback=True, timeout_s=60)
        handshake = ClientHandshake(self.people[name], self.identity.public)
        reply = connection.handshake(handshake.hello().to_bytes())
        return connection, SecureChannel(handshake.finish(ServerHello.from_bytes(reply.server_hello)))


def test_micro_batched_steps_over_the_network_equal_the_whole_batch_reference(base):
    _, reference, _ = _train(base, 1)
    server = Server(base)
    try:
        split = _split(base)
        remote = server.remote("alice", micro_batches=3)
        assert remote.accepts_micro_batches and remote.limits.micro_batches_max == 64
        client = SplitClient("alice", split.head, split.tail, remote, OPTIMIZER, micro_batches=3)
        for batch in _batches():
            client.train_step(batch)
        remote.close()
        _assert_same(_adapters(split) | {k: v for k, v in _adapters(server.split).items()
                                         if k.startswith("trunk/")}, reference)
        assert server.trunk.steps == 3 and server.service.mode.book.progress == {"alice": 3}
    finally:
        server.server.stop(0)


def _forward(step: int, rows: int, index: int, count: int, train: bool = True) -> pb.ForwardRequest:
    mask = torch.ones(rows, 5, dtype=torch.long)
    return pb.ForwardRequest(step=step, hidden=encode_tensor(torch.randn(rows, 5, HIDDEN)),
                             lengths=mask_to_lengths(mask), train=train, micro_batch=index,
                             micro_batches=count)


def _send(connection, channel, kind: str, step: int, message) -> bytes:
    return channel.open(connection.exchange(channel.seal(kind, step, message.SerializeToString())))


def _refused(connection, channel, step: int, message, code: str, kind: str = "forward") -> None:
    with pytest.raises(RemoteError) as caught:
        _send(connection, channel, kind, step, message)
    assert code in caught.value.message, caught.value.message


def test_the_server_refuses_micro_batches_that_break_the_protocol_and_keeps_serving(base):
    server = Server(base)
    try:
        connection, channel = server.session("mallory")
        _refused(connection, channel, 1, _forward(1, 2, 1, 2), "no_open_step")  # no micro-batch 0 yet
        _refused(connection, channel, 2, _forward(2, 2, 0, 65), "micro_batches_refused")
        _refused(connection, channel, 3, _forward(3, 2, 0, 2, train=False), "bad_micro_batch")
        _refused(connection, channel, 4, _forward(4, 2, 3, 0), "bad_micro_batch")  # index without a count
        _send(connection, channel, "forward", 5, _forward(5, 5, 0, 3))
        _refused(connection, channel, 6, _forward(6, 4, 1, 3), "too_large")  # 9 rows > max_batch 8
        assert server.trunk.pending() == []  # the refused step was abandoned: its graphs are freed
        _send(connection, channel, "forward", 7, _forward(7, 2, 0, 2))
        _refused(connection, channel, 8, _forward(8, 2, 0, 2), "step_open")  # micro-batch 0 again
        _refused(connection, channel, 9, _forward(9, 2, 1, 3), "bad_micro_batch")  # another count
        stray = pb.BackwardRequest(step=7, grad=encode_tensor(torch.randn(2, 5, HIDDEN)))
        _refused(connection, channel, 7, stray, "no_open_step", kind="backward")  # step 7 was abandoned
        assert server.trunk.pending() == [] and "mallory" not in server.service.mode.book.progress
        # a well-formed step, its backwards in any order, counts once
        for step in (11, 12):
            _send(connection, channel, "forward", step, _forward(step, 2, step - 11, 2))
        for step in (12, 11):
            grad = pb.BackwardRequest(step=step, grad=encode_tensor(torch.randn(2, 5, HIDDEN)))
            _send(connection, channel, "backward", step, grad)
        assert server.service.mode.book.progress["mallory"] == 1 and server.trunk.steps == 1

        honest = SplitClient("alice", *_head_tail(base), server.remote("alice", micro_batches=2), OPTIMIZER,
                             micro_batches=2)
        for seed in range(2):
            assert torch.isfinite(torch.tensor(honest.train_step(make_batch(batch=4, seed=seed))))
        assert server.service.mode.book.progress["alice"] == 2 and server.trunk.steps == 3
    finally:
        server.server.stop(0)


def _head_tail(base):
    split = _split(base)
    return split.head, split.tail


def test_a_mode_without_micro_batches_refuses_them_at_connect(base):
    from splitfed.server.batcher import Batcher
    from splitfed.server.client_batch import BatchedTrunk
    from splitfed.server.modes import ClientBatchMode

    split = _split(base)
    mode = ClientBatchMode(LocalTrunk(split.trunk, OPTIMIZER), Batcher(BatchedTrunk(split.trunk, OPTIMIZER),
                                                                        0.01, 8, 30.0))
    server = Server(base, mode)
    try:
        with pytest.raises(TrunkMismatchError, match="takes a step in one forward only"):
            server.remote("alice", micro_batches=2)
        connection, channel = server.session("mallory")
        _refused(connection, channel, 1, _forward(1, 2, 0, 2), "micro_batches_refused")
    finally:
        server.server.stop(0)
        mode.close()


def test_a_micro_batch_index_outside_its_count_is_refused():
    with pytest.raises(ValueError, match="micro-batch 2 of 2"):
        MicroBatch(2, 2)


@pytest.mark.parametrize(("extra", "message"), [
    ({"micro_batches": 5}, "cannot exceed batch_size"),
    ({"micro_batches": 2, "privacy": {"forward": {"clip": 1.0, "sigma": 0.5}}}, "privacy"),
    ({"micro_batches": 2, "partition": {"head": 1, "layout": "two-part"}}, "three-part layout"),
    ({"micro_batches": 0}, "greater than or equal to 1"),
])
def test_client_settings_refuse_micro_batches_that_cannot_work(tmp_path, extra, message):
    from pydantic import ValidationError

    from splitfed.client.settings import ClientSettings

    base = {"name": "a", "identity": tmp_path / "a.key", "server_key": tmp_path / "s.pub", "batch_size": 4}
    assert ClientSettings(**base, micro_batches=4).micro_batches == 4
    with pytest.raises(ValidationError, match=message):
        ClientSettings(**base | extra)
