"""Checkpoints: atomic writes, checksums, fallback to the previous one, a full disk, optimizer state."""

from __future__ import annotations

import errno

import pytest
import torch

from splitfed.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    load_optimizer_state,
    optimizer_state,
)
from splitfed.checkpoint import store as store_module


def _checkpoint(step: int) -> Checkpoint:
    return Checkpoint(step, {"w": torch.full((3, 2), float(step)), "rng": torch.arange(5, dtype=torch.uint8)},
                      {"round": step // 2, "losses": [1.5, 0.25]})


def test_round_trip_and_rotation(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    assert store.latest() is None
    for step in (1, 2, 3):
        store.save(_checkpoint(step))
    loaded = store.latest()
    assert loaded.step == 3 and loaded.meta == {"round": 1, "losses": [1.5, 0.25]}
    assert torch.equal(loaded.tensors["w"], torch.full((3, 2), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000000002", "ckpt-0000000003"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest", "missing"])
def test_a_damaged_checkpoint_falls_back_to_the_previous(tmp_path, damage, caplog):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(_checkpoint(1))
    newest = store.save(_checkpoint(2))
    target = newest / ("MANIFEST.json" if damage == "manifest" else "tensors.safetensors")
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) - 7]))
    elif damage == "manifest":
        target.write_bytes(b"{not json")
    else:
        target.unlink()
    loaded = store.latest()
    assert loaded.step == 1
    assert "unusable" in caplog.text


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save(_checkpoint(1))
    (path / "meta.json").write_text("{}")
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints"):
        store.latest()


def test_a_crash_mid_write_leaves_only_a_staging_folder_that_is_ignored(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint(4))
    (tmp_path / ".tmp-ckpt-0000000005-1").mkdir()
    (tmp_path / ".tmp-ckpt-0000000005-1" / "tensors.safetensors").write_bytes(b"partial")
    assert store.latest().step == 4


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint(1))
    real_write = store_module._write_file
    calls = []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 2:  # the second file of the checkpoint hits a full disk half-way
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(store_module, "_write_file", failing_write)
    with pytest.raises(CheckpointError, match="disk is full.*ckpt-0000000001 is intact"):
        store.save(_checkpoint(2))
    monkeypatch.setattr(store_module, "_write_file", real_write)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-0000000001"]  # no partial folder left
    assert store.latest().step == 1


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)

    def step(module, opt):
        loss = module(torch.ones(2, 4)).pow(2).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step(model, optimizer)
    tensors, meta = optimizer_state(optimizer, "opt")
    store = CheckpointStore(tmp_path)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    store.save(Checkpoint(3, {**tensors, **weights}, {"optimizer": meta}))
    loaded = store.latest()

    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict({k[len("model."):]: v for k, v in loaded.tensors.items() if k.startswith("model.")})
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=0.5)  # the checkpoint's lr wins
    load_optimizer_state(twin_optimizer, loaded.tensors, loaded.meta["optimizer"], "opt")
    for _ in range(2):
        step(model, optimizer)
        step(twin, twin_optimizer)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
