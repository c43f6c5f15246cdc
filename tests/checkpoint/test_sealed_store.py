"""Sealed checkpoints: round trip; tampered, truncated, renamed, wrong-key and unsealed ones refused."""

from __future__ import annotations

import json

import pytest
import torch

from splitfed.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from splitfed.checkpoint.store import MANIFEST, META, TENSORS
from splitfed.security import Sealer
from splitfed.security.sealing import new_key


def _checkpoint(step: int) -> Checkpoint:
    return Checkpoint(step, {"sub0/adapter/w": torch.full((4, 3), 0.5 + step)}, {"progress": {"a": step}})


def _fix_manifest(folder):
    """An attacker who edits a file can also recompute the (unauthenticated) manifest checksums."""
    import hashlib

    manifest = json.loads((folder / MANIFEST).read_text())
    for name in (TENSORS, META):
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_sealed_round_trip_hides_the_tensors(tmp_path):
    sealer = Sealer(new_key())
    store = CheckpointStore(tmp_path, sealer=sealer)
    folder = store.save(_checkpoint(3))
    raw = (folder / TENSORS).read_bytes()
    assert torch.full((4, 3), 3.5).numpy().tobytes() not in raw
    assert b"progress" not in (folder / META).read_bytes()
    loaded = store.latest()
    assert loaded.step == 3 and loaded.meta == {"progress": {"a": 3}}
    assert torch.equal(loaded.tensors["sub0/adapter/w"], torch.full((4, 3), 3.5))


@pytest.mark.parametrize("damage", ["tamper", "truncate", "wrong-key", "rename", "swap-files", "unsealed"])
def test_bad_sealed_checkpoints_refuse_to_load(tmp_path, damage):
    sealer = Sealer(new_key())
    store = CheckpointStore(tmp_path / "c", keep=3, sealer=sealer)
    store.save(_checkpoint(1))
    folder = store.save(_checkpoint(2))
    expected = {"tamper": "tampered", "truncate": "truncated", "wrong-key": "another key",
                "rename": "tampered", "swap-files": "tampered", "unsealed": "not sealed"}[damage]
    if damage == "tamper":
        data = bytearray((folder / TENSORS).read_bytes())
        data[-20] ^= 0x01
        (folder / TENSORS).write_bytes(bytes(data))
    elif damage == "truncate":
        (folder / TENSORS).write_bytes((folder / TENSORS).read_bytes()[:-7])
    elif damage == "wrong-key":
        store = CheckpointStore(tmp_path / "c", sealer=Sealer(new_key()))
    elif damage == "rename":  # an old checkpoint replayed under a newer step
        folder.rename(folder.with_name("ckpt-0000000009"))
        folder = folder.with_name("ckpt-0000000009")
    elif damage == "swap-files":
        (folder / META).write_bytes((folder / TENSORS).read_bytes())
    elif damage == "unsealed":  # a cleartext checkpoint planted in a sealed store
        CheckpointStore(tmp_path / "c").save(_checkpoint(5))
        folder = tmp_path / "c" / "ckpt-0000000005"
    if damage not in ("wrong-key", "rename"):
        _fix_manifest(folder)
    with pytest.raises(CheckpointError, match=expected) as error:
        store.latest()
    assert "refusing sealed checkpoint" in str(error.value)


def test_a_store_without_the_key_refuses_sealed_checkpoints(tmp_path):
    CheckpointStore(tmp_path, sealer=Sealer(new_key())).save(_checkpoint(1))
    with pytest.raises(CheckpointError, match="configure the sealing key provider"):
        CheckpointStore(tmp_path).latest()
