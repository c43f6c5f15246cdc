"""Greedy generation through three parts with per-part KV caches equals the whole model's generate."""

from __future__ import annotations

import pytest
import torch

from splitfed.models import (
    LoraSpec,
    Partition,
    add_adapter,
    generate_greedy,
    iter_greedy,
    load_model,
    split_model,
)
from tests.conftest import TINY

PROMPTS = ["hello there", "a much longer prompt, left padded against the short one"]


def _lora_everywhere(split) -> None:
    for part in split.parts.values():
        add_adapter(part, LoraSpec(r=4))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in split.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("partition", [Partition(1, 1), Partition(2, 1), Partition(1, 2)], ids=str)
def test_greedy_matches_hf_generate_with_left_padded_batch(name, partition):
    model, tokenizer = load_model(name)
    split = split_model(model, partition)
    _lora_everywhere(split)
    for prompts in (PROMPTS[:1], PROMPTS):
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        expected = model.generate(**encoded, max_new_tokens=24, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        produced = generate_greedy(split, encoded.input_ids, encoded.attention_mask, 24)
        assert torch.equal(produced, expected)


def test_decode_steps_send_one_token_per_boundary():
    """After the prefill, the trunk receives (B, 1, H) hidden states only."""
    model, tokenizer = load_model("tiny-llama")
    split = split_model(model, Partition(1, 1))
    shapes: list[tuple[int, ...]] = []
    handle = split.trunk.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    tokens = list(iter_greedy(split, encoded.input_ids, encoded.attention_mask, max_new_tokens=5))
    handle.remove()
    assert len(tokens) == 5
    assert shapes[0] == (2, encoded.input_ids.shape[1], 64)
    assert shapes[1:] == [(2, 1, 64)] * 4


def test_generation_stops_at_eos_and_pads_finished_rows():
    model, tokenizer = load_model("tiny-gpt2")
    split = split_model(model, Partition(1, 1))
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    free = generate_greedy(split, encoded.input_ids, encoded.attention_mask, 10)
    eos = int(free[0, encoded.input_ids.shape[1] + 2])  # pretend the 3rd new token of row 0 is EOS
    expected = model.generate(**encoded, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id)
    produced = generate_greedy(split, encoded.input_ids, encoded.attention_mask, 10, eos_token_id=eos,
                               pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(produced, expected)
