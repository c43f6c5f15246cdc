"""Each client its own partition (issue 20): the server's trunk holds the widest range of blocks and
runs, for each client, only the blocks that client's head and tail leave to it; FedAvg averages each
block's adapter over the clients holding it. Exactness and the aggregation rule are checked
numerically, in process and over the network."""

from __future__ import annotations

import threading

import pytest
import torch

from splitfed.aggregation.fedavg import keywise_average, weighted_average
from splitfed.client.process import _federated_average
from splitfed.client.remote_trunk import RemoteTrunk, TrunkMismatchError
from splitfed.federation import FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import LoraSpec, Partition, adapter_state, init_adapter, load_model, split_model
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server import LocalTrunk
from splitfed.server.generation import GenerationCaches
from splitfed.server.modes import SequentialMode
from splitfed.server.service_parts import ServiceLimits
from splitfed.server.trunk_service import TrunkService
from splitfed.training.replicate import replicate
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve
from tests.conftest import make_batch
from tests.training.test_training import _collate, _examples

SPEC = LoraSpec(r=4, alpha=8)
RANGE = PartitionSettings(head=[1, 2], tail=1)  # tiny-llama has 4 blocks: the trunk holds [1:3]


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-llama")[0]


def _settings(**overrides) -> FederationSettings:
    values = dict(clients=2, rounds=2, local_steps=2, batch_size=2, seed=7, adapter=SPEC,
                  optimizer={"lr": 1e-2}, partition=RANGE)
    values.update(overrides)
    return FederationSettings(**values)


def _diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _of_block(state: dict[str, torch.Tensor], block: int) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if f".layers.{block}." in key}


def _blocks(state: dict[str, torch.Tensor]) -> set[int]:
    return {int(key.split(".layers.")[1].split(".")[0]) for key in state}


def test_a_block_starts_from_the_same_adapter_whichever_part_holds_it(model):
    narrow = split_model(replicate(model), Partition(2, 1))
    wide = split_model(replicate(model), Partition(1, 1))
    for part in (narrow.head, narrow.trunk, wide.head, wide.trunk):
        init_adapter(part, SPEC, 3)
    assert _diff(_of_block(adapter_state(wide.trunk), 2), adapter_state(narrow.trunk)) == 0.0
    assert _diff(_of_block(adapter_state(wide.trunk), 1), _of_block(adapter_state(narrow.head), 1)) == 0.0


def test_a_trunk_running_part_of_its_blocks_equals_a_trunk_of_those_blocks(model):
    wide = split_model(replicate(model), Partition(1, 1)).trunk
    narrow = split_model(replicate(model), Partition(2, 1)).trunk
    for part in (wide, narrow):
        init_adapter(part, SPEC, 3)
    batch = make_batch(2, 9, seed=4)
    hidden = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(1))
    mask = batch["attention_mask"]
    assert torch.equal(wide(hidden, mask, blocks=(2, 3)), narrow(hidden, mask))
    assert not torch.allclose(wide(hidden, mask), narrow(hidden, mask))
    with pytest.raises(ValueError, match=r"blocks \[0:3\] are not within"):
        wide(hidden, mask, blocks=(0, 3))
    # generation: a stream over the sub-range, prefill then a decode step, equals the narrow trunk's
    wide_caches, narrow_caches = GenerationCaches(wide), GenerationCaches(narrow)
    try:
        for past, new in ((0, hidden[:, :8]), (8, hidden[:, 8:])):
            got, cached = wide_caches.step("c", 0, new, mask[:, :past + new.shape[1]], past, blocks=(2, 3))
            expected, _ = narrow_caches.step("c", 0, new, mask[:, :past + new.shape[1]], past)
            assert torch.allclose(got, expected, atol=1e-6) and cached == past + new.shape[1]
    finally:
        wide_caches._compute.close()
        narrow_caches._compute.close()


def test_a_single_client_in_a_range_trains_exactly_as_with_the_fixed_partition(model):
    shards = [_examples(6, seed=2)]
    own = PartitionSettings(head=2, tail=1)
    ranged = InProcessFederation(model, shards, _collate, _settings(clients=1, client_partitions=[own]))
    fixed = InProcessFederation(model, shards, _collate, _settings(clients=1, partition=own))
    untouched = {k: v.clone() for k, v in _of_block(adapter_state(ranged.server.trunk), 1).items()}
    for _ in range(2):
        assert ranged.train_round() == fixed.train_round()
    for part in ("head", "tail"):
        assert _diff(ranged.clients[0].adapter_states()[part], fixed.clients[0].adapter_states()[part]) == 0.0
    trunk = adapter_state(ranged.server.trunk)
    assert _diff(_of_block(trunk, 2), adapter_state(fixed.server.trunk)) == 0.0
    assert _diff(_of_block(trunk, 1), untouched) == 0.0  # not run for this client: not moved


def test_fedavg_averages_each_block_over_the_clients_that_hold_it(model):
    shards = [_examples(4, seed=5), _examples(6, seed=6)]
    own = [PartitionSettings(head=1, tail=1), PartitionSettings(head=2, tail=1)]
    federation = InProcessFederation(model, shards, _collate, _settings(client_partitions=own, rounds=1))
    before: list[dict] = []
    aggregate = federation.aggregate
    federation.aggregate = lambda: (before.extend(c.adapter_states() for c in federation.clients),
                                    aggregate())
    federation.train_round()
    after = [client.adapter_states() for client in federation.clients]
    assert _blocks(before[0]["head"]) == {0} and _blocks(before[1]["head"]) == {0, 1}
    block_0 = weighted_average([_of_block(b["head"], 0) for b in before], [4, 6])
    for state in after:
        assert _diff(_of_block(state["head"], 0), block_0) <= 1e-7
    own_block = _of_block(before[1]["head"], 1)  # client 1 alone holds block 1
    assert _diff(_of_block(after[1]["head"], 1), own_block) == 0.0
    assert _diff(after[0]["tail"], weighted_average([b["tail"] for b in before], [4, 6])) <= 1e-7


def test_keywise_average_by_hand():
    a = {"x": torch.tensor([1.0]), "y": torch.tensor([10.0])}
    b = {"x": torch.tensor([3.0])}
    averaged = keywise_average([a, b], [1, 3])
    assert averaged["x"].item() == pytest.approx(2.5) and averaged["y"].item() == 10.0
    with pytest.raises(ValueError):
        keywise_average([a], [1, 2])


def test_two_clients_with_their_own_partitions_over_the_network_match_the_in_process_run(model):
    shards = [_examples(4, seed=8), _examples(6, seed=9)]
    own = [PartitionSettings(head=1, tail=1), PartitionSettings(head=2, tail=1)]
    # 3 steps of 2 rows a round: each client trains at least its shard (4, 6 rows) between rounds, so the
    # weight the server grants it (its claim, at most the rows it served) is its shard size, as in process
    settings = _settings(client_partitions=own, local_steps=3)
    reference = InProcessFederation(model, shards, _collate, settings)
    expected = [reference.train_round() for _ in range(settings.rounds)]

    local = InProcessFederation(model, shards, _collate, settings)  # the same clients, to drive remotely
    server_identity = Identity.generate("server")
    people = [Identity.generate(f"client-{i}") for i in range(2)]
    trunk = split_model(replicate(model), RANGE.partition()).trunk
    init_adapter(trunk, SPEC, settings.seed)
    mode = SequentialMode(LocalTrunk(trunk, settings.optimizer), roster=["client-0", "client-1"])
    limits = ServiceLimits(first_block_max=2, end_block_min=3)
    service = TrunkService(mode, ServerHandshake(server_identity, AllowList([p.public for p in people])),
                           limits, aggregation="plain")
    server, port = serve(service, "127.0.0.1:0", allow_insecure_loopback=True)
    losses: dict[int, list[float]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            connection = TrunkConnection(f"127.0.0.1:{port}", allow_insecure_loopback=True, timeout_s=60)
            remote = RemoteTrunk(connection, people[index], server_identity.public)
            remote.connect((own[index].head, 4 - own[index].tail), 64)
            assert remote.blocks == (None if index == 0 else (2, 3))
            client = local.clients[index]
            client.trunk = remote
            for round_index in range(1, settings.rounds + 1):
                for _ in range(settings.local_steps):
                    losses[index].append(client.train_step(next(local._batches[index])))
                _federated_average(client, remote, round_index, len(shards[index]))
            remote.close()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.stop(None)
        service.close()
    assert not errors, errors
    for index in range(2):  # the in-process order is client 0, client 1 each step: the roster's turns
        ordered = [loss for round_losses in expected for loss in round_losses[index::2]]
        assert losses[index] == pytest.approx(ordered, abs=1e-6)
        for part in ("head", "tail"):
            got = local.clients[index].adapter_states()[part]
            assert _diff(got, reference.clients[index].adapter_states()[part]) <= 1e-6
    assert _diff(adapter_state(trunk), adapter_state(reference.server.trunk)) <= 1e-6


def test_a_partition_outside_the_range_is_refused(model):
    with pytest.raises(ValueError, match=r"client_partitions\[0\]: head 3"):
        _settings(clients=1, client_partitions=[PartitionSettings(head=3, tail=1)])
    with pytest.raises(ValueError, match="prefix"):
        _settings(clients=1, adapter={"kind": "prefix"},
                  client_partitions=[PartitionSettings(head=2, tail=1)])
    with pytest.raises(ValueError, match="head_max 1 is smaller"):
        PartitionSettings(head=2, head_max=1)
    with pytest.raises(ValueError, match="a range is"):
        PartitionSettings(head=[1, 2, 3])
    with pytest.raises(ValueError, match="two-part"):
        PartitionSettings(head=[1, 2], layout="two-part")


def test_the_server_refuses_blocks_outside_its_range_and_a_changed_partition(model):
    server_identity, person = Identity.generate("server"), Identity.generate("mallory")
    trunk = split_model(replicate(model), RANGE.partition()).trunk
    init_adapter(trunk, SPEC, 0)
    service = TrunkService(SequentialMode(LocalTrunk(trunk)), ServerHandshake(server_identity,
                                                                                AllowList([person.public])),
                           ServiceLimits(first_block_max=2, end_block_min=3), aggregation="plain")
    server, port = serve(service, "127.0.0.1:0", allow_insecure_loopback=True)
    try:
        def remote() -> RemoteTrunk:
            connection = TrunkConnection(f"127.0.0.1:{port}", allow_insecure_loopback=True, timeout_s=30)
            return RemoteTrunk(connection, person, server_identity.public)

        with pytest.raises(TrunkMismatchError, match="within the server's range"):
            remote().connect((0, 3), 64)  # head 0 is below the range
        client = remote()
        client.connect((2, 3), 64)
        hidden, mask = torch.randn(1, 5, 64), torch.ones(1, 5, dtype=torch.long)
        assert client.forward("mallory", hidden, mask, train=False).shape == (1, 5, 64)
        client.blocks = (1, 3)  # the same session, another partition
        with pytest.raises(RemoteError, match="keeps the partition"):
            client.forward("mallory", hidden, mask, train=False)
        client.blocks = (0, 3)  # outside what the trunk holds, whatever the client claims
        with pytest.raises(RemoteError, match="outside what this server runs"):
            client.forward("mallory", hidden, mask, train=False)
    finally:
        server.stop(None)
        service.close()


def test_a_client_of_another_model_family_is_refused_at_connect(model):
    server_identity, person = Identity.generate("server"), Identity.generate("alice")
    trunk = split_model(replicate(model), Partition(1, 1)).trunk
    service = TrunkService(SequentialMode(LocalTrunk(trunk)),
                           ServerHandshake(server_identity, AllowList([person.public])), aggregation="plain")
    server, port = serve(service, "127.0.0.1:0", allow_insecure_loopback=True)
    try:
        connection = TrunkConnection(f"127.0.0.1:{port}", allow_insecure_loopback=True, timeout_s=30)
        with pytest.raises(TrunkMismatchError, match="serves a 'llama' model, this client loads a 'gpt2'"):
            RemoteTrunk(connection, person, server_identity.public).connect((1, 3), 64, model_type="gpt2")
    finally:
        server.stop(None)
        service.close()
