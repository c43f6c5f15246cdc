"""Server-hierarchical training: K sub-servers in parallel threads over one frozen base, with
weighted FedAvg of their trunk adapters every R steps."""

from __future__ import annotations

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.models import (
    LoraSpec,
    Partition,
    adapter_state,
    init_adapter,
    load_adapter_state,
    load_model,
    split_model,
)
from splitfed.server import LocalTrunk
from splitfed.server.hierarchical import HierarchicalTrunk
from splitfed.training.fedavg import weighted_average
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate, storage_bytes
from tests.conftest import make_batch

SPEC = LoraSpec(r=4, alpha=8)
OPTIMIZER = OptimizerSettings(lr=1e-2)
SIZES = {"a": 2, "b": 3, "c": 1, "d": 2}  # batch sizes: samples differ per sub-server
ASSIGNMENT = [["a", "b"], ["c", "d"]]


def _clients(base):
    """Client head/tail copies (same seeded init) and a deterministic batch stream per client."""
    clients = {}
    for name, size in SIZES.items():
        split = split_model(replicate(base), Partition(1, 1))
        init_adapter(split.head, SPEC, 1)
        init_adapter(split.tail, SPEC, 1)
        batches = iter([make_batch(batch=size, length=8 + i % 3, seed=10 * i + ord(name))
                        for i in range(100)])
        clients[name] = (split, batches)
    return clients


def _trunk(base):
    split = split_model(replicate(base), Partition(1, 1))
    init_adapter(split.trunk, SPEC, 1)
    return split.trunk


def _step(client: tuple, name: str):
    split, batches = client

    def run(trunk: LocalTrunk) -> int:
        batch = next(batches)
        SplitClient(name, split.head, split.tail, trunk, OPTIMIZER).train_step(batch)
        return int(batch["input_ids"].shape[0])

    return run


def test_hierarchical_equals_the_plain_reference_of_local_steps_and_weighted_averages():
    base, _ = load_model("tiny-llama")
    rounds, every = 2, 2
    # parallel hierarchical run
    clients = _clients(base)
    hierarchical = HierarchicalTrunk(_trunk(base), sub_servers=2, average_every=every, optimizer=OPTIMIZER)
    steps = [[_step(clients[n], n) for n in names] for names in ASSIGNMENT]
    hierarchical.run(steps, rounds)
    # plain reference: one trunk per sub-server, sequential loops, explicit weighted averages
    ref_clients = _clients(base)
    subs = [LocalTrunk(_trunk(base), OPTIMIZER) for _ in ASSIGNMENT]
    ref_steps = [[_step(ref_clients[n], n) for n in names] for names in ASSIGNMENT]
    initial = adapter_state(subs[0].trunk)
    for _ in range(rounds):
        samples = [0, 0]
        for index, sub in enumerate(subs):
            for _ in range(every):
                for step in ref_steps[index]:
                    samples[index] += step(sub)
        average = weighted_average([adapter_state(s.trunk) for s in subs], samples)
        for sub in subs:
            load_adapter_state(sub.trunk, average)
    assert samples == [2 * (2 + 3), 2 * (1 + 2)]
    expected = adapter_state(subs[0].trunk)
    assert max((expected[k] - initial[k]).abs().max().item() for k in expected) > 1e-3
    for sub in hierarchical.subs:
        got = adapter_state(sub.trunk)
        for key, value in expected.items():
            assert (got[key] - value).abs().max().item() <= 1e-6, key
    assert hierarchical.averages == rounds


def test_sub_servers_share_one_frozen_base():
    base, _ = load_model("smollm2")
    trunk = _trunk(base)
    adapter_bytes = sum(p.numel() * p.element_size() for p in trunk.parameters() if p.requires_grad)
    totals = []
    for k in (1, 2, 4):
        hierarchical = HierarchicalTrunk(trunk, sub_servers=k, average_every=1, optimizer=OPTIMIZER)
        for sub in hierarchical.subs:  # one step each, so the optimizer state exists
            sub.forward("x", torch.randn(1, 4, base.config.hidden_size), None)
            sub.backward("x", torch.ones(1, 4, base.config.hidden_size))
        totals.append(storage_bytes(*[s.trunk for s in hierarchical.subs],
                                    *[s.optimizer for s in hierarchical.subs]))
    per_sub = [(totals[1] - totals[0]) / 1, (totals[2] - totals[0]) / 3]
    base_bytes = totals[0] - 3 * adapter_bytes
    for growth in per_sub:
        # adapter + AdamW's two moments (+ small buffers), nowhere near a copy of the trunk
        assert growth <= 3 * adapter_bytes + 64 * 1024, (growth, adapter_bytes)
        assert growth < 0.05 * base_bytes, (growth, base_bytes)


def test_bad_configuration_is_refused():
    base, _ = load_model("tiny-llama")
    with pytest.raises(ValueError):
        HierarchicalTrunk(_trunk(base), sub_servers=0, average_every=1)
    hierarchical = HierarchicalTrunk(_trunk(base), sub_servers=2, average_every=1)
    with pytest.raises(ValueError, match="client lists"):
        hierarchical.run([[]], rounds=1)
