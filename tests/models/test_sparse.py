"""Sparse fine-tuning next to LoRA: selection by Fisher / gradient magnitude, exact split training,
indices + values storage, and merging into the base weights on export."""

from __future__ import annotations

import pytest
import torch

from splitfed.models import (
    LoraSpec,
    Partition,
    SparseSpec,
    adapter_state,
    add_adapter,
    export_merged,
    load_adapter,
    load_model,
    load_sparse_state,
    save_adapter,
    select_and_add_sparse,
    sparse_parameter_count,
    sparse_state,
    split_model,
    trainable_parameters,
)
from splitfed.models.sparse import allocate, selection_scores, sparse_targets
from splitfed.models.whole import WholeModel
from splitfed.training.loss import causal_lm_loss
from tests.conftest import make_batch

BATCHES = [make_batch(batch=2, length=10, seed=s) for s in range(3)]


def _loss(model, batch):
    return lambda: causal_lm_loss(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])


@pytest.mark.parametrize("criterion", ["fisher", "gradient"])
def test_scores_are_the_accumulated_gradients(criterion):
    model, _ = load_model("tiny-llama")
    whole = WholeModel(model, LoraSpec(r=2))
    targets = sparse_targets(whole, SparseSpec(target_modules=["up_proj", "q_proj"]))
    assert sorted(targets) == [f"model.layers.{i}.{m}" for i in range(4)
                               for m in ("mlp.up_proj", "self_attn.q_proj")]
    scores = selection_scores(targets, [_loss(whole, b) for b in BATCHES], criterion)
    weight = targets["model.layers.1.mlp.up_proj"].weight
    assert not weight.requires_grad  # frozen again after scoring
    grads = []
    for batch in BATCHES:
        weight.requires_grad_(True)
        grads.append(torch.autograd.grad(_loss(whole, batch)(), weight)[0])
        weight.requires_grad_(False)
    expected = sum(g**2 for g in grads) if criterion == "fisher" else sum(grads).abs()
    assert torch.allclose(scores["model.layers.1.mlp.up_proj"], expected, rtol=1e-5, atol=1e-12)
    chosen = allocate(scores, 0.01)
    sizes = {p: s.numel() for p, s in scores.items()}
    assert sum(len(i) for i in chosen.values()) == round(0.01 * sum(sizes.values()))
    flat = scores["model.layers.1.mlp.up_proj"].flatten()
    picked = chosen["model.layers.1.mlp.up_proj"]
    rest = torch.ones_like(flat, dtype=torch.bool)
    rest[picked] = False
    assert flat[picked].min() >= flat[rest].max()  # the top entries, not any entries


def _split_with_sparse(name: str, density: float = 0.02):
    model, _ = load_model(name)
    split = split_model(model, Partition(1, 1))
    for part in split.parts.values():
        add_adapter(part, LoraSpec(r=2))
    entries = select_and_add_sparse(split.trunk, SparseSpec(density=density),
                                    [_loss(split, b) for b in BATCHES[:2]])
    return model, split, entries


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_sparse_trains_with_lora_and_merges_on_export(name, tmp_path):
    model, split, entries = _split_with_sparse(name)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = trainable_parameters(split.trunk)
    sparse_names = [n for n in trainable if "sparse_delta" in n]
    assert sparse_names and any("lora_" in n for n in trainable)
    assert sparse_parameter_count(split.trunk) == entries == sum(trainable[n].numel() for n in sparse_names)
    optimizer = torch.optim.AdamW([p for part in split.parts.values() for p in part.parameters()
                                   if p.requires_grad], lr=1e-2)
    batch = BATCHES[2]
    for _ in range(3):
        causal_lm_loss(split(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    values = torch.cat([trainable[n].detach() for n in sparse_names])
    assert (values != 0).float().mean() > 0.9  # the selected entries trained
    for n, p in model.named_parameters():  # the base weights themselves never change
        if "lora_" not in n and "sparse_delta" not in n:
            assert torch.equal(p, base[n]), n
    state = sparse_state(split.trunk)
    indices = [k for k in state if k.endswith(".sparse_indices")]
    assert indices and all(state[k].dtype == torch.int64 for k in indices)
    assert sum(state[k].numel() for k in indices) == entries  # indices + values, never dense
    with torch.no_grad():
        expected = split(batch["input_ids"], batch["attention_mask"])
    dirs = [save_adapter(part, tmp_path / part.role) for part in split.parts.values()]

    fresh, _ = load_model(name)
    reloaded = split_model(fresh, Partition(1, 1))
    for part, directory in zip(reloaded.parts.values(), dirs, strict=True):
        load_adapter(part, directory)
    with torch.no_grad():
        assert (reloaded(batch["input_ids"], batch["attention_mask"]) - expected).abs().max() < 1e-5

    merged_dir = export_merged(name, dirs, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.no_grad():
        plain = WholeModel(merged)(batch["input_ids"], batch["attention_mask"])
    assert (plain - expected).abs().max() < 1e-4


def test_split_with_sparse_equals_the_whole_model():
    _, split, _ = _split_with_sparse("tiny-llama")
    with torch.no_grad():
        for part in split.parts.values():
            for n, p in part.named_parameters():
                if "sparse_delta" in n or "lora_B" in n:
                    p.normal_(std=0.05)
    fresh, _ = load_model("tiny-llama")
    whole = WholeModel(fresh, LoraSpec(r=2))
    whole.load_part_states([adapter_state(part) for part in split.parts.values()])
    load_sparse_state(whole, sparse_state(split.trunk))
    batch = BATCHES[0]
    split_loss = causal_lm_loss(split(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    whole_loss = causal_lm_loss(whole(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    assert abs(split_loss.item() - whole_loss.item()) < 1e-6
    assert sparse_parameter_count(whole) == sparse_parameter_count(split.trunk)
    split_loss.backward()
    grads = {n: p.grad for n, p in split.trunk.named_parameters() if "sparse_delta" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
