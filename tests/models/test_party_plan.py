"""`splitfed plan` per party: its weights are what the party loads, its activations what a real step
keeps for backward, and the command prints and writes both parties."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from splitfed.cli import app
from splitfed.models import LoraSpec, Partition, init_adapter, load_model
from splitfed.models.party import CLIENT_ROLES, SERVER_ROLES, load_parts
from splitfed.models.party_plan import _SavedTensors, loading_transient, plan_party, step_activations
from splitfed.models.sources import config_of
from splitfed.training.loss import causal_lm_loss
from tests.conftest import make_batch

PARTITION = Partition(1, 1)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-mixtral"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planned_weights_are_what_each_party_loads(name, dtype, tmp_path):
    model, tokenizer = load_model(name)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = config_of(tmp_path)
    for party, roles in (("client", CLIENT_ROLES), ("server", SERVER_ROLES)):
        planned = plan_party(config, party, PARTITION, dtype=dtype, batch=2, length=8)
        loaded = load_parts(tmp_path, PARTITION, roles, dtype)
        assert planned.weight_bytes == loaded.report.part_bytes, (name, party)
        trainable = 0
        for part in loaded.split.parts.values():
            init_adapter(part, LoraSpec(), 0)
            trainable += sum(p.numel() for p in part.parameters() if p.requires_grad)
        assert planned.adapter_bytes == trainable * 16  # weight, gradient, two AdamW moments, float32


def test_planned_activations_are_what_a_real_step_keeps_for_backward():
    """The meta-device count is within 5% of the same count on real tensors (attention kernels differ a
    little on the meta device), and a real training step (the parts' own forward, the loss) keeps
    within 10% of it."""
    name, batch, length = "tiny-llama", 3, 14
    planned = plan_party(config_of(name), "client", PARTITION, dtype=torch.float32, batch=batch,
                         length=length)
    loaded = load_parts(name, PARTITION, CLIENT_ROLES)
    head, tail = loaded.split.head, loaded.split.tail
    for part in (head, tail):
        init_adapter(part, LoraSpec(), 0)
    measured = step_activations(loaded.split, CLIENT_ROLES, batch, length, device="cpu")
    assert abs(measured - planned.activation_bytes) <= 0.05 * measured
    for part in (head, tail):
        part.train(True)
    saved = _SavedTensors([p for part in (head, tail) for p in part.parameters()])
    data = make_batch(batch, length, left_pad=False)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
        head(data["input_ids"])
        hidden = torch.zeros(batch, length, 64, requires_grad=True)
        causal_lm_loss(tail(hidden), data["labels"])
    assert abs(saved.bytes + 2 * saved.largest - planned.activation_bytes) <= 0.1 * planned.activation_bytes


def test_the_loading_transient_counts_casts_only():
    loaded = load_parts("tiny-llama", PARTITION, CLIENT_ROLES)
    model = loaded.model
    assert loading_transient(model, torch.float32, torch.float32) == 0  # read straight into place
    assert loading_transient(model, torch.bfloat16, torch.float32) > 0  # float32 buffers until cast


def test_the_plan_command_prints_each_party_and_writes_json(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["plan", "--model", "tiny-llama", "--head", "1", "--tail", "1",
                                      "--batch", "2", "--length", "32", "--json", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "client: peak" in text and "server: peak" in text and "weights" in text
    parties = {p["party"]: p for p in json.loads(out.read_text())["parties"]}
    assert parties["client"]["blocks"] == [0, 3] and parties["server"]["blocks"] == [1, 2]
    assert parties["client"]["runtime_bytes"] > 100 * 2**20  # measured: torch alone is more
    assert all(p["peak_bytes"] > p["weight_bytes"] + p["runtime_bytes"] for p in parties.values())
    refused = CliRunner().invoke(app, ["plan", "--model", "tiny-llama", "--head", "3", "--tail", "1"])
    assert refused.exit_code == 2 and "leaves no block" in refused.output
