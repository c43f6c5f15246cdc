"""Hierarchical mode's sub-servers: K trunk adapters over one frozen base (the network test,
tests/network/test_hierarchical_service.py, shows they train exactly like the plain reference)."""

from __future__ import annotations

import pytest
import torch

from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.server import LocalTrunk
from splitfed.server.modes import HierarchicalMode
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate, replicate_frozen, storage_bytes

SPEC = LoraSpec(r=4, alpha=8)
OPTIMIZER = OptimizerSettings(lr=1e-2)


def _trunk(base):
    split = split_model(replicate(base), Partition(1, 1))
    init_adapter(split.trunk, SPEC, 1)
    return split.trunk


def _mode(trunk, sub_servers: int, average_every: int = 1, roster=None) -> HierarchicalMode:
    trunks = [LocalTrunk(trunk, OPTIMIZER)] + [LocalTrunk(replicate_frozen(trunk), OPTIMIZER)
                                               for _ in range(sub_servers - 1)]
    return HierarchicalMode(trunks, average_every, roster)


def test_sub_servers_share_one_frozen_base():
    base, _ = load_model("smollm2")
    trunk = _trunk(base)
    adapter_bytes = sum(p.numel() * p.element_size() for p in trunk.parameters() if p.requires_grad)
    totals = []
    for k in (1, 2, 4):
        mode = _mode(trunk, k)
        trunks = [sub.trunk for sub in mode.subs]
        for sub in trunks:  # one step each, so the optimizer state exists
            sub.forward("x", torch.randn(1, 4, base.config.hidden_size), None)
            sub.backward("x", torch.ones(1, 4, base.config.hidden_size))
        totals.append(storage_bytes(*[s.trunk for s in trunks], *[s.optimizer for s in trunks]))
        mode.close()
    per_sub = [(totals[1] - totals[0]) / 1, (totals[2] - totals[0]) / 3]
    base_bytes = totals[0] - 3 * adapter_bytes
    for growth in per_sub:
        # adapter + AdamW's two moments (+ small buffers), nowhere near a copy of the trunk
        assert growth <= 3 * adapter_bytes + 64 * 1024, (growth, adapter_bytes)
        assert growth < 0.05 * base_bytes, (growth, base_bytes)


def test_clients_are_spread_by_roster_position_then_arrival():
    base, _ = load_model("tiny-llama")
    mode = _mode(_trunk(base), 2, roster=["a", "b", "c"])
    try:
        assert [mode.subs.index(mode.assign(name)) for name in ("a", "b", "c")] == [0, 1, 0]
        assert [mode.subs.index(mode.assign(name)) for name in ("x", "y", "z")] == [0, 1, 0]
    finally:
        mode.close()


def test_bad_configuration_is_refused():
    base, _ = load_model("tiny-llama")
    with pytest.raises(ValueError, match="at least one sub-server"):
        HierarchicalMode([], average_every=1)
    with pytest.raises(ValueError, match="average_every"):
        HierarchicalMode([LocalTrunk(_trunk(base))], average_every=0)
