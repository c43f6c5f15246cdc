"""Adapters save in peft's format, load back, and merge into a plain Hugging Face model directory."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from splitfed.federation import FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import (
    AdapterError,
    LoraSpec,
    Partition,
    PrefixSpec,
    add_adapter,
    export_merged,
    load_adapter,
    load_model,
    save_adapter,
    split_model,
    trainable_parameters,
)
from splitfed.tasks import collate
from tests.conftest import TINY, make_batch


def _trained_federation(name: str, spec) -> InProcessFederation:
    model, _ = load_model(name)
    rows = []
    for index in range(6):
        batch = make_batch(batch=1, length=10, left_pad=False, seed=index)
        rows.append({"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()})
    settings = FederationSettings(clients=1, rounds=1, local_steps=3, batch_size=2,
                                  partition=PartitionSettings(head=1, tail=1), adapter=spec,
                                  optimizer={"lr": 5e-2})
    federation = InProcessFederation(model, [rows], lambda r: collate(r, pad_token_id=0), settings)
    federation.train_round()
    return federation


def _save_parts(federation: InProcessFederation, directory) -> list:
    client = federation.clients[0]
    return [save_adapter(part, directory / part.role) for part in
            (client.head, federation.server.trunk, client.tail)]


def test_only_adapter_parameters_train():
    model, _ = load_model("tiny-llama")
    split = split_model(model, Partition(1, 1))
    for part in split.parts.values():
        add_adapter(part, LoraSpec(r=2, target_modules=["q_proj", "v_proj", "down_proj"]))
    names = [n for part in split.parts.values() for n in trainable_parameters(part)]
    assert names and all(".lora_" in n for n in names)
    assert any("down_proj" in n for n in names)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.2 * sum(
        p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", TINY)
def test_lora_merged_directory_loads_with_plain_transformers_and_matches_split(name, tmp_path):
    federation = _trained_federation(name, LoraSpec(r=4, alpha=8))
    directories = _save_parts(federation, tmp_path)
    config = json.loads((directories[1] / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    keys = load_file(str(directories[1] / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") and ".lora_" in k for k in keys)

    out = export_merged(name, directories, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out)  # no splitfed code involved
    batch = make_batch(left_pad=True, seed=11)
    from splitfed.models import positions_from_mask

    positions = positions_from_mask(batch["attention_mask"], batch["input_ids"].shape[1], 0, "cpu")
    with torch.no_grad():
        expected = federation.logits(batch["input_ids"], batch["attention_mask"])
        merged = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=positions).logits
    real = batch["attention_mask"].bool()
    assert (merged[real] - expected[real]).abs().max().item() <= 1e-4


def test_merged_adapter_keys_also_load_with_peft(tmp_path):
    """The union of the three parts' files is a peft adapter of the whole model."""
    federation = _trained_federation("tiny-llama", LoraSpec(r=4, alpha=8))
    directories = _save_parts(federation, tmp_path)
    union = {}
    for directory in directories:
        union.update(load_file(str(directory / "adapter_model.safetensors")))
    whole_dir = tmp_path / "whole_adapter"
    LoraConfig.from_pretrained(str(directories[1])).save_pretrained(str(whole_dir))
    from safetensors.torch import save_file

    save_file(union, str(whole_dir / "adapter_model.safetensors"))
    base, _ = load_model("tiny-llama")
    peft_model = PeftModel.from_pretrained(base, str(whole_dir))
    ids = torch.tensor([[4, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - federation.logits(ids)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "spec", [LoraSpec(r=4, alpha=8), PrefixSpec(num_virtual_tokens=3)], ids=["lora", "prefix"]
)
def test_part_adapter_round_trip(spec, tmp_path):
    federation = _trained_federation("tiny-glm", spec)
    directories = _save_parts(federation, tmp_path)
    model, _ = load_model("tiny-glm")
    fresh = split_model(model, Partition(1, 1))
    for part, directory in zip(fresh.parts.values(), directories, strict=True):
        load_adapter(part, directory)
    batch = make_batch(seed=5)
    with torch.no_grad():
        expected = federation.logits(batch["input_ids"], batch["attention_mask"])
        got = fresh(batch["input_ids"], batch["attention_mask"])
    assert (got - expected).abs().max().item() <= 1e-6


def test_adapter_for_other_blocks_is_refused(tmp_path):
    federation = _trained_federation("tiny-llama", LoraSpec(r=4))
    directories = _save_parts(federation, tmp_path)
    model, _ = load_model("tiny-llama")
    other = split_model(model, Partition(2, 1))
    with pytest.raises(AdapterError, match="blocks"):
        load_adapter(other.trunk, directories[1])
    with pytest.raises(AdapterError, match="missing"):
        load_adapter(other.head, tmp_path / "nowhere")


def test_prefix_export_writes_whole_model_prefix_adapter(tmp_path):
    federation = _trained_federation("tiny-llama", PrefixSpec(num_virtual_tokens=3))
    directories = _save_parts(federation, tmp_path)
    out = export_merged("tiny-llama", directories, tmp_path / "merged")
    weights = load_file(str(out / "prefix_adapter" / "adapter_model.safetensors"))
    assert weights["prompt_embeddings"].shape == (3, 4 * 2 * 2 * 16)
    config = json.loads((out / "prefix_adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["num_layers"] == 4
