"""Hierarchical mode over the network: two sub-servers over one frozen base serve four clients in
parallel and average their trunk adapters every 2 steps, exactly like the plain reference (client b
sends its 3 rows a step in 2 pipelined micro-batches, which changes nothing but the timing)."""

from __future__ import annotations

import threading

import torch

from splitfed.aggregation.fedavg import weighted_average
from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.models import (
    LoraSpec,
    Partition,
    adapter_state,
    init_adapter,
    load_adapter_state,
    load_model,
    split_model,
)
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server import LocalTrunk
from splitfed.server.modes import HierarchicalMode
from splitfed.server.trunk_service import TrunkService
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate, replicate_frozen
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.server import serve
from tests.conftest import make_batch

SPEC = LoraSpec(r=4, alpha=8)
OPTIMIZER = OptimizerSettings(lr=1e-2)
ROSTER = ["a", "b", "c", "d"]  # a, c -> sub-server 0; b, d -> sub-server 1
SIZES = {"a": 2, "b": 3, "c": 1, "d": 2}
STEPS = 4


def _client(base, name: str):
    split = split_model(replicate(base), Partition(1, 1))
    init_adapter(split.head, SPEC, 1)
    init_adapter(split.tail, SPEC, 1)
    batches = [make_batch(batch=SIZES[name], length=7 + i, seed=10 * i + ord(name)) for i in range(STEPS)]
    return split, batches


def _trunk(base):
    split = split_model(replicate(base), Partition(1, 1))
    init_adapter(split.trunk, SPEC, 1)
    return split.trunk


def test_hierarchical_service_equals_the_plain_reference():
    base, _ = load_model("tiny-llama")
    server_identity = Identity.generate("server")
    people = {name: Identity.generate(name) for name in ROSTER}
    trunk = _trunk(base)
    mode = HierarchicalMode([LocalTrunk(trunk, OPTIMIZER), LocalTrunk(replicate_frozen(trunk), OPTIMIZER)],
                            average_every=2, roster=ROSTER)
    allow = AllowList([p.public for p in people.values()])
    service = TrunkService(mode, ServerHandshake(server_identity, allow))
    server, port = serve(service, "127.0.0.1:0", allow_insecure_loopback=True)
    clients = {name: _client(base, name) for name in ROSTER}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            split, batches = clients[name]
            connection = TrunkConnection(f"127.0.0.1:{port}", allow_insecure_loopback=True, timeout_s=60)
            remote = RemoteTrunk(connection, people[name], server_identity.public)
            micro_batches = 2 if name == "b" else 1
            remote.connect((1, 3), 64, micro_batches=micro_batches)
            client = SplitClient(name, split.head, split.tail, remote, OPTIMIZER, micro_batches=micro_batches)
            for batch in batches:
                client.train_step(batch)
            remote.close()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(name,)) for name in ROSTER]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    server.stop(0)
    assert not errors, errors
    service.finish()
    assert service.averages == STEPS and service.steps == STEPS * len(ROSTER)

    # the plain reference: per round every client of each sub-server steps once, then a weighted average
    ref_clients = {name: _client(base, name) for name in ROSTER}
    subs = [LocalTrunk(_trunk(base), OPTIMIZER) for _ in range(2)]
    groups = [["a", "c"], ["b", "d"]]
    runners = {name: SplitClient(name, ref_clients[name][0].head, ref_clients[name][0].tail, subs[index],
                                 OPTIMIZER) for index, group in enumerate(groups) for name in group}
    for step in range(STEPS):
        samples = [0, 0]
        for index, group in enumerate(groups):
            for name in group:
                runners[name].train_step(ref_clients[name][1][step])
                samples[index] += SIZES[name]
        average = weighted_average([adapter_state(s.trunk) for s in subs], samples)
        for sub in subs:
            load_adapter_state(sub.trunk, average)
    expected = adapter_state(subs[0].trunk)
    got = adapter_state(service.trunk.trunk)
    assert max((expected[k] - v).abs().max().item() for k, v in adapter_state(_trunk(base)).items()) > 1e-3
    for key, value in expected.items():
        assert (got[key] - value).abs().max().item() <= 1e-5, key
    for name in ROSTER:
        for part in ("head", "tail"):
            mine = adapter_state(getattr(clients[name][0], part))
            reference = adapter_state(getattr(ref_clients[name][0], part))
            for key, value in reference.items():
                assert torch.allclose(mine[key], value, atol=1e-5), (name, part, key)
