"""The other Llama-style families (Mistral with a sliding window, Qwen3, GLM-4) split exactly too,
and a local .gguf file loads directly."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Glm4Config,
    Glm4ForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from splitfed.models import LoraSpec, Partition, add_adapter, generate_greedy, load_model, split_model
from splitfed.models.loading import smollm2_gguf_path
from splitfed.training.loss import causal_lm_loss
from tests.conftest import make_batch

SMALL = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0)


def _models():
    torch.manual_seed(0)
    yield "mistral", MistralForCausalLM(MistralConfig(sliding_window=5, **SMALL))
    yield "qwen3", Qwen3ForCausalLM(Qwen3Config(head_dim=16, **SMALL))
    yield "glm4", Glm4ForCausalLM(Glm4Config(head_dim=16, **SMALL))


@pytest.mark.parametrize(("family", "model"), list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_split_equals_whole_for_other_llama_style_families(family, model):
    model.eval()
    batch = make_batch(left_pad=True)
    from splitfed.models import positions_from_mask

    positions = positions_from_mask(batch["attention_mask"], batch["input_ids"].shape[1], 0, "cpu")
    split = split_model(model, Partition(1, 1))
    for part in split.parts.values():
        add_adapter(part, LoraSpec(r=2))
    whole_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=positions).logits
    causal_lm_loss(whole_logits, batch["labels"]).backward()
    whole_grads = {n: p.grad.clone() for n, p in split.named_parameters() if p.requires_grad}
    split.zero_grad()
    split_logits = split(batch["input_ids"], batch["attention_mask"])
    causal_lm_loss(split_logits, batch["labels"]).backward()
    real = batch["attention_mask"].bool()
    assert (split_logits[real] - whole_logits[real]).abs().max() <= 1e-6
    for name, parameter in split.named_parameters():
        if parameter.requires_grad:
            assert (parameter.grad - whole_grads[name]).abs().max() <= 1e-6, name
    prompt = batch["input_ids"][:, -6:]
    expected = model.generate(input_ids=prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(generate_greedy(split, prompt, None, 12), expected)


def test_a_local_gguf_file_loads_and_matches_the_cached_conversion():
    direct, tokenizer = load_model(smollm2_gguf_path())
    cached, _ = load_model("smollm2")
    ids = tokenizer(["Hello, world"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(direct(input_ids=ids).logits, cached(input_ids=ids).logits)
