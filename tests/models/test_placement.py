"""A trunk over several devices computes what it computes on one; the plan reads a config alone,
balances contiguous blocks by bytes and refuses what does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from splitfed.cli import app
from splitfed.models import LoraSpec, Partition, add_adapter, load_model, split_model
from splitfed.models.placement import (
    GIB,
    PlacementError,
    block_bytes,
    contiguous_runs,
    place_trunk,
    plan_trunk,
    read_config,
)
from splitfed.server import LocalTrunk
from splitfed.training.replicate import replicate
from tests.conftest import make_batch

CONFIGS = Path(__file__).parents[1] / "data" / "configs"


def test_contiguous_runs_balance_the_largest_run():
    assert contiguous_runs([1, 1, 1, 1], 2) == [[0, 1], [2, 3]]
    assert contiguous_runs([4, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4]]
    assert contiguous_runs([1, 1, 1], 3) == [[0], [1], [2]]
    runs = contiguous_runs([3, 1, 2, 2, 1, 3], 3)
    assert [i for run in runs for i in run] == list(range(6)) and max(
        sum([3, 1, 2, 2, 1, 3][i] for i in run) for run in runs) == 4
    with pytest.raises(PlacementError, match="at most one device per block"):
        contiguous_runs([1, 1], 3)


def test_llama_2_70b_plan_from_its_config_alone():
    config = read_config(CONFIGS / "llama-2-70b.json")
    sizes = block_bytes(config, torch.bfloat16)
    # q, o: 8192^2; k, v: 8192 x 1024; MLP: 3 x 8192 x 28672; two norms of 8192; 2 bytes each
    per_block = 2 * (2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192)
    assert len(sizes) == 80 and set(sizes) == {per_block}
    two = plan_trunk(config, Partition(2, 2), ["cuda:0", "cuda:1"], "bfloat16", cache_tokens=4096,
                     memory_gib=80)
    assert two.fits and two.trunk == (2, 78)
    assert [share.blocks for share in two.shares] == [tuple(range(2, 40)), tuple(range(40, 78))]
    assert two.shares[0].weight_bytes == 38 * per_block
    assert two.kv_bytes_per_token == 76 * 2 * 8 * 128 * 2  # keys and values, 8 KV heads of 128, bf16
    one = plan_trunk(config, Partition(2, 2), ["cuda:0"], "bfloat16", memory_gib=80)
    assert not one.fits and one.shares[0].total_bytes > 80 * GIB


def test_llama_3_8b_fits_one_24_gib_device_in_bf16_not_in_fp32_with_a_big_cache():
    config = read_config(CONFIGS / "llama-3-8b.json")
    assert plan_trunk(config, Partition(2, 2), ["cuda:0"], "bfloat16", cache_tokens=8192, memory_gib=24).fits
    assert not plan_trunk(config, Partition(2, 2), ["cuda:0"], "float32", cache_tokens=65536,
                          memory_gib=24).fits


def test_plan_command_prints_refuses_and_writes_json(tmp_path):
    runner = CliRunner()
    out = tmp_path / "plan.json"
    ok = runner.invoke(app, ["plan", "--model", str(CONFIGS / "llama-2-70b.json"), "--devices",
                             "cuda:0,cuda:1", "--memory-gib", "80", "--json", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "[2:40]" in ok.output and "[40:78]" in ok.output and json.loads(out.read_text())["fits"]
    refused = runner.invoke(app, ["plan", "--model", str(CONFIGS / "llama-2-70b.json"), "--devices", "cuda:0",
                                  "--memory-gib", "80"])
    assert refused.exit_code == 1 and "DOES NOT FIT" in refused.output and "refused" in refused.output
    if not torch.cuda.is_available():  # a device this machine lacks, without --memory-gib
        missing = runner.invoke(app, ["plan", "--model", str(CONFIGS / "llama-3-8b.json"), "--devices",
                                      "cuda:0"])
        assert missing.exit_code == 2 and "CUDA is not available" in missing.output
    bad = runner.invoke(app, ["plan", "--model", str(tmp_path / "none.json")])
    assert bad.exit_code == 2 and "config.json" in bad.output


def test_a_trunk_placed_over_devices_computes_what_it_computes_on_one():
    """On CPU the two devices are `cpu` and `cpu:0`: different devices to the placement code, so every
    block boundary between them moves the hidden state, masks and rotary embeddings."""
    model, _ = load_model("tiny-llama")
    reference = split_model(replicate(model), Partition(1, 1)).trunk
    placed = split_model(replicate(model), Partition(1, 1)).trunk
    for part in (reference, placed):
        torch.manual_seed(0)
        add_adapter(part, LoraSpec(r=2))
    placement = place_trunk(placed, ["cpu", "cpu:0"])
    assert [str(placement[i]) for i in placed.layer_indices] == ["cpu", "cpu:0"]
    batch = make_batch(left_pad=True)
    hidden = torch.randn(*batch["input_ids"].shape, 64)
    outputs = []
    for part in (reference, placed):
        trunk = LocalTrunk(part)
        out = trunk.forward("c", hidden, batch["attention_mask"])
        grad_in = trunk.backward("c", torch.ones_like(out))
        outputs.append((out, grad_in, {n: p.detach().clone() for n, p in part.named_parameters()
                                       if p.requires_grad}))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    for name, value in outputs[0][2].items():
        assert torch.equal(outputs[1][2][name], value), name  # the optimizer stepped identically


def test_a_device_that_does_not_exist_is_refused_before_loading():
    from pydantic import ValidationError

    from splitfed.server.settings import ServerSettings

    if not torch.cuda.is_available():
        with pytest.raises(ValidationError, match="CUDA is not available"):
            ServerSettings(identity="k", allowlist="a", devices=["cpu", "cuda:0"])
    with pytest.raises(ValidationError, match="only cpu and cuda"):
        ServerSettings(identity="k", allowlist="a", devices=["tpu:0"])
