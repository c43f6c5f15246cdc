"""`splitfed serve` with a sealing key: its checkpoints and trunk adapter are sealed on disk, it resumes
from them with the key, and refuses them under another key or none; real processes on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from splitfed.checkpoint import CheckpointError, CheckpointStore
from splitfed.config import build_settings
from splitfed.models import sparse_state
from splitfed.models.adapters import read_adapter
from splitfed.security import SealingSettings
from splitfed.server.process import build_service, run_server
from splitfed.server.service_state import restore_service
from splitfed.server.settings import ServerSettings
from splitfed.server.trusted_slice import SEALED_TRUNK, TrustedSlice
from tests.network.conftest import splitfed, wait_for_port


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splitfed.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_serve_seals_checkpoints_and_trunk_and_refuses_another_key(deployment):
    root = deployment.root
    made = _cli("sealing-key", str(root / "seal.key"))
    assert made.returncode == 0, made.stdout + made.stderr
    assert _cli("sealing-key", str(root / "other.key")).returncode == 0
    assert _cli("sealing-key", str(root / "seal.key")).returncode == 2  # never overwritten silently
    sparse = "sparse: {density: 0.01, selection_batches: 1}\n"  # the trunk's sparse deltas are sealed too
    serve = ("serve", "--config", str(deployment.server_config(sparse)), "--roster", "alice",
             "--exit-when-done")
    server = splitfed(*serve, "--seal-key-file", str(root / "seal.key"), log=root / "server.log")
    try:
        port = wait_for_port(root / "port", server)
        client = splitfed("train", "--config", str(deployment.client_config("alice", 0, 3)), "--server",
                          f"127.0.0.1:{port}", log=root / "alice.log")
        assert client.wait(timeout=300) == 0, (root / "alice.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
    finally:
        for process in (server,):
            if process.poll() is None:
                process.kill()
    out = root / "out" / "server"
    checkpoints = sorted((out / "checkpoints").glob("ckpt-*"))
    assert checkpoints and json.loads((checkpoints[-1] / "MANIFEST.json").read_text())["sealed"]
    assert not (out / "trunk" / "adapter_model.safetensors").exists()  # no cleartext trunk adapter
    assert (out / "trunk" / SEALED_TRUNK).is_dir()
    key_settings = SealingSettings(key_provider="file", key_file=root / "seal.key")
    trunk = TrustedSlice(key_settings, out / "checkpoints").load_trunk_state(out / "trunk")
    sealed_ckpt = CheckpointStore(out / "checkpoints", sealer=key_settings.sealer()).latest()
    assert sealed_ckpt.step == 3 and sealed_ckpt.meta["progress"] == {"alice": 3}
    assert any(name.endswith(".sparse_values") for name in trunk)
    for name, value in trunk.items():
        key = f"sub0/sparse/{name[len('sparse/'):]}" if name.startswith("sparse/") else f"sub0/adapter/{name}"
        assert torch.equal(sealed_ckpt.tensors[key], value)
    # the client's adapters are the client's own business: saved in the clear on its side
    assert read_adapter(root / "out" / "alice" / "head")[1]

    # resuming under another key, or with no key, refuses the sealed checkpoint (the same code path
    # as `splitfed serve --resume`, which turns the error into exit status 2)
    settings = build_settings(ServerSettings, deployment.server_config(sparse), {"resume": True})
    other = SealingSettings(key_provider="file", key_file=root / "other.key")
    service = build_service(settings)  # with the right key: the sealed state (sparse deltas too) restores
    restore_service(service, sealed_ckpt)
    assert service.steps == 3 and service.trunk.selection.done
    restored = sparse_state(service.trunk.trunk)
    assert restored and all(torch.equal(restored[k], v) for k, v in
                            ((k[len("sparse/"):], v) for k, v in trunk.items() if k.startswith("sparse/")))
    with pytest.raises(CheckpointError, match="another key"):
        run_server(settings.model_copy(update={"sealing": other}))
    with pytest.raises(CheckpointError, match="configure the sealing key provider"):
        run_server(settings)
