"""Split head -> trunk -> tail computes exactly what the whole model computes."""

from __future__ import annotations

import copy

import pytest
import torch

from splitfed.models import (
    LoraSpec,
    Partition,
    PrefixSpec,
    adapter_state,
    add_adapter,
    load_model,
    set_training,
    split_model,
)
from splitfed.models.whole import WholeModel
from splitfed.training.loss import causal_lm_loss
from tests.conftest import TINY, make_batch

PARTITIONS = [Partition(1, 1), Partition(2, 1), Partition(1, 2), Partition(0, 1), Partition(1, 0)]
TOL = 1e-6


def _randomize_adapters(module: torch.nn.Module, seed: int = 1) -> None:
    """LoRA's B starts at zero, which would make A's gradient trivially zero: randomize all."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def _pair(name: str, partition: Partition, spec):
    """A split model and an independent whole model with identical base and adapter weights."""
    base, _ = load_model(name)
    split = split_model(copy.deepcopy(base), partition)
    for part in split.parts.values():
        add_adapter(part, spec)
    _randomize_adapters(split)
    whole = WholeModel(copy.deepcopy(base), spec)
    whole.load_part_states([adapter_state(p) for p in split.parts.values()])
    return split, whole


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    return (a - b).abs().max().item()


SPECS = [LoraSpec(r=4, alpha=8), PrefixSpec(num_virtual_tokens=3)]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("spec", SPECS, ids=["lora", "prefix"])
@pytest.mark.parametrize("left_pad", [False, True], ids=["no-pad", "left-pad"])
def test_logits_loss_and_gradients_match_whole_model(name, spec, left_pad):
    batch = make_batch(left_pad=left_pad)
    for partition in PARTITIONS:
        split, whole = _pair(name, partition, spec)
        whole_logits = whole(batch["input_ids"], batch["attention_mask"])
        whole_loss = causal_lm_loss(whole_logits, batch["labels"])
        whole_loss.backward()
        split_logits = split(batch["input_ids"], batch["attention_mask"])
        split_loss = causal_lm_loss(split_logits, batch["labels"])
        split_loss.backward()

        assert _max_diff(split_logits, whole_logits, batch["attention_mask"]) <= TOL, partition
        assert abs(split_loss.item() - whole_loss.item()) <= TOL
        whole_grads = {n: p.grad for n, p in whole.named_parameters() if p.requires_grad}
        split_grads = _split_grads(split)
        assert set(split_grads) == set(whole_grads) and whole_grads
        for key, grad in whole_grads.items():
            assert grad is not None and grad.abs().sum() > 0, key
            assert _max_diff(split_grads[key], grad) <= TOL, (partition, key)


def _split_grads(split) -> dict[str, torch.Tensor]:
    """Gradients of every trainable part parameter under whole-model names."""
    grads: dict[str, torch.Tensor] = {}
    prompts = []
    for part in split.parts.values():
        for name, parameter in part.named_parameters():
            if not parameter.requires_grad:
                continue
            if name == "prefix.embedding.weight":
                prompts.append(parameter.grad)
            else:
                grads[name] = parameter.grad
    if prompts:
        grads["prefix.embedding.weight"] = torch.cat(prompts, dim=1)
    return grads


def test_hf_loss_agrees_with_causal_lm_loss():
    model, _ = load_model("tiny-llama")
    batch = make_batch(left_pad=False)
    hf = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    ours = causal_lm_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    assert abs(hf.item() - ours.item()) <= 1e-6


def test_sliding_window_is_active_in_tiny_qwen2():
    """The qwen2 test model really uses its 6-token window on a 14-token batch."""
    model, _ = load_model("tiny-qwen2")
    batch = make_batch(left_pad=False)
    windowed = model(input_ids=batch["input_ids"]).logits
    model.config.layer_types = ["full_attention"] * model.config.num_hidden_layers
    full = model(input_ids=batch["input_ids"]).logits
    assert (windowed - full).abs().max() > 1e-4


@pytest.mark.parametrize("name", TINY)
def test_tail_last_only_gives_the_last_positions_logits(name):
    base, _ = load_model(name)
    split = split_model(base, Partition(1, 1))
    batch = make_batch(batch=2, length=9, left_pad=True)
    with torch.no_grad():
        hidden = split.trunk(split.head(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
        full = split.tail(hidden, batch["attention_mask"])
        last = split.tail(hidden, batch["attention_mask"], last_only=True)
    assert last.shape == (2, 1, base.config.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-6)


def test_adapters_attached_after_eval_follow_the_part_so_set_training_can_skip_the_walk():
    base, _ = load_model("tiny-llama")
    split = split_model(base, Partition(1, 1))
    split.trunk.eval()
    add_adapter(split.trunk, LoraSpec(r=4, alpha=8, dropout=0.5))  # dropout: train mode would show
    assert not any(module.training for module in split.trunk.modules())
    set_training(split.trunk, True)
    assert all(module.training for module in split.trunk.modules())
    set_training(split.trunk, False)
    hidden = torch.randn(2, 5, base.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(split.trunk(hidden), split.trunk(hidden))  # no dropout at inference
