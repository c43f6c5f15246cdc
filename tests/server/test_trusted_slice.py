"""The trusted slice persists the trunk adapter sealed (no cleartext copy) and loads it back exactly."""

from __future__ import annotations

import pytest
import torch

from splitfed.checkpoint import CheckpointError
from splitfed.models import LoraSpec, Partition, adapter_state, init_adapter, load_model, split_model
from splitfed.security import SealingSettings, create_key_file
from splitfed.server.trusted_slice import SEALED_TRUNK, TrustedSlice


def _trunk(seed: int):
    model, _ = load_model("tiny-llama")
    split = split_model(model, Partition(1, 1))
    init_adapter(split.trunk, LoraSpec(r=2), seed)
    with torch.no_grad():
        for name, parameter in split.trunk.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    return split.trunk


def test_sealed_trunk_round_trip_and_refusals(tmp_path):
    key = create_key_file(tmp_path / "seal.key")
    sealing = SealingSettings(key_provider="file", key_file=key, algorithm="chacha20-poly1305")
    slice_ = TrustedSlice(sealing, tmp_path / "ckpt")
    assert slice_.sealed and slice_.checkpoints.sealer is not None
    trunk = _trunk(1)
    slice_.save_trunk(trunk, tmp_path / "out", base_model="tiny-llama", step=7)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files and all(SEALED_TRUNK in str(p) for p in files)  # no cleartext adapter written
    state = adapter_state(trunk)
    blob = b"".join(p.read_bytes() for p in files)
    assert all(t.numpy().tobytes()[:64] not in blob for t in state.values())
    loaded = slice_.load_trunk_state(tmp_path / "out")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)

    other = create_key_file(tmp_path / "other.key")
    with pytest.raises(CheckpointError, match="another key"):
        TrustedSlice(SealingSettings(key_provider="file", key_file=other), tmp_path / "c2").load_trunk_state(
            tmp_path / "out")
    clear = TrustedSlice(None, tmp_path / "c3")
    clear.save_trunk(trunk, tmp_path / "clear")
    with pytest.raises(CheckpointError, match="refusing a cleartext one"):
        slice_.load_trunk_state(tmp_path / "clear")
    assert all(torch.equal(clear.load_trunk_state(tmp_path / "clear")[k], state[k]) for k in state)


def test_sparse_deltas_are_sealed_with_the_trunk(tmp_path):
    from splitfed.models import add_sparse, sparse_state

    key = create_key_file(tmp_path / "seal.key")
    slice_ = TrustedSlice(SealingSettings(key_provider="file", key_file=key), tmp_path / "ckpt")
    trunk = _trunk(2)
    add_sparse(trunk, {"model.layers.1.mlp.up_proj": torch.tensor([3, 70, 500])})
    with torch.no_grad():
        next(p for n, p in trunk.named_parameters() if "sparse_delta" in n).copy_(torch.tensor([1., -2., 3.]))
    slice_.save_trunk(trunk, tmp_path / "out")
    again = _trunk(2)
    slice_.load_trunk(again, tmp_path / "out")
    loaded, saved = sparse_state(again), sparse_state(trunk)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
