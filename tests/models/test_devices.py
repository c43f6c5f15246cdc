"""The ``device`` setting: checked before anything loads, ``auto`` says what it chose, and (where CUDA
exists) the parts compute there with the same result as on the CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.client.settings import ClientSettings
from splitfed.config import ConfigError, build_settings
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.models.devices import available_devices, check_device, place_client_parts, resolve_device
from splitfed.models.placement import PlacementError, place_trunk
from splitfed.server import LocalTrunk
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from tests.conftest import make_batch

CUDA = torch.cuda.is_available()
REQUIRED = {"name": "alice", "identity": "k", "server_key": "s.pub"}


def test_auto_picks_cuda_when_present_and_says_so(caplog):
    caplog.set_level(logging.INFO)
    device = resolve_device("auto")
    assert device.type == ("cuda" if CUDA else "cpu")
    assert f"device auto -> {device}" in caplog.text
    assert check_device("cpu") == "cpu" and available_devices()[0] == "cpu"


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(True, False, "bfloat16"),
                                                               (False, True, "bfloat16"),
                                                               (False, False, "float32")])
def test_dtype_auto_is_bfloat16_where_the_cpu_computes_it_natively(monkeypatch, caplog, avx512_bf16, amx,
                                                                     expected):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    settings = ClientSettings(**REQUIRED, device="cpu", dtype="auto")
    assert settings.dtype == expected
    assert f"dtype auto -> {expected} on cpu" in caplog.text
    assert ClientSettings(**REQUIRED, device="cpu", dtype="float32").dtype == "float32"  # as asked


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_a_device_this_machine_does_not_have_is_refused_before_loading(tmp_path):
    with pytest.raises(PlacementError, match=r"'cuda:0' does not exist on this machine \(here: cpu\)"):
        check_device("cuda:0")
    with pytest.raises(PlacementError, match="only cpu and cuda"):
        check_device("mps")
    with pytest.raises(PlacementError, match="is not a device"):
        check_device("gpu please")
    with pytest.raises(ConfigError, match=r"device: Value error, 'cuda' does not exist"):
        build_settings(ClientSettings, None, {**REQUIRED, "device": "cuda"})


def _trained(device: str) -> tuple[dict, list[float]]:
    model, _ = load_model("tiny-llama")
    split = split_model(replicate(model), Partition(1, 1))
    for part in split.parts.values():
        init_adapter(part, LoraSpec(r=4, alpha=8), 0)
    place_client_parts(split, torch.device(device))
    if device != "cpu":
        place_trunk(split.trunk, [device])
    optimizer = OptimizerSettings(lr=1e-2)
    client = SplitClient("a", split.head, split.tail, LocalTrunk(split.trunk, optimizer), optimizer)
    losses = [client.train_step(make_batch(2, 9, seed=i)) for i in range(3)]
    return client.adapter_states(), losses


def test_the_client_moves_batches_and_answers_to_its_device():
    states, losses = _trained("cpu")
    assert all(t.device.type == "cpu" for part in states.values() for t in part.values())
    assert len(losses) == 3


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_on_cuda_split_training_matches_the_cpu():
    cpu_states, cpu_losses = _trained("cpu")
    gpu_states, gpu_losses = _trained("cuda:0")
    assert gpu_losses == pytest.approx(cpu_losses, abs=1e-4)
    for part in ("head", "tail"):
        for key, value in cpu_states[part].items():
            assert gpu_states[part][key].device.type == "cpu"  # adapters leave the device as CPU copies
            assert torch.allclose(gpu_states[part][key], value, atol=1e-4), key
