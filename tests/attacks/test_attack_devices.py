"""``splitfed attack --dtype/--device``: the attacker's models in half precision recover what they
recover in float32 (within a tolerance), a device this machine lacks is refused before anything
loads, and on CUDA (where there is one) the attack matches the CPU's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from splitfed.cli import app

ATTACKS = "nn-cosine,learned,direct,gradient,adaptive,generation"


def _attack(out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, [
        "attack", "--model", "tiny-llama", "--head", "1", "--tail", "1", "--victims", "4",
        "--attacks", ATTACKS, "--inverter-steps", "40", "--set", "public_tokens=1024",
        "--set", "gradient_public_tokens=512", "--set", "privacy.learned.kind=bottleneck",
        "--set", "privacy.learned.warmup_steps=2", "--output", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "attack.json").read_text())


def _scores(saved: dict) -> dict[str, float]:
    scores = {name: m["token_accuracy"] for name, m in saved["attacks"].items()}
    scores |= {f"private {name}": m["token_accuracy"]
               for name, m in saved["private_positions"]["attacks"].items()}
    return scores


def test_a_bfloat16_attacker_recovers_what_a_float32_one_does(tmp_path):
    full = _scores(_attack(tmp_path / "fp32", "--device", "cpu"))
    half_saved = _attack(tmp_path / "bf16", "--device", "cpu", "--dtype", "bfloat16")
    assert half_saved["settings"]["dtype"] == "bfloat16"
    half = _scores(half_saved)
    assert set(half) == set(full) and len(full) >= 7
    assert full["nn-cosine"] == pytest.approx(half["nn-cosine"], abs=0.02)  # head 1: the embedding dominates
    for name, accuracy in full.items():
        assert abs(half[name] - accuracy) <= 0.15, (name, accuracy, half[name])


def test_a_device_this_machine_lacks_is_refused_before_loading(tmp_path):
    missing = f"cuda:{torch.cuda.device_count() + 3}"
    result = CliRunner().invoke(app, ["attack", "--model", "no-such-model", "--device", missing,
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert missing in result.output and "available" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_attack_recovers_what_it_does_on_the_cpu(tmp_path):
    cpu = _scores(_attack(tmp_path / "cpu", "--device", "cpu"))
    cuda = _scores(_attack(tmp_path / "cuda", "--device", "cuda"))
    for name, accuracy in cpu.items():
        assert abs(cuda[name] - accuracy) <= 0.15, (name, accuracy, cuda[name])
