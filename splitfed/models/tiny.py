"""Tiny random-initialised models with a byte-level tokenizer, for tests and quick demos."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GlmConfig,
    GlmForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

_COMMON = {"vocab_size": VOCAB_SIZE, "pad_token_id": PAD_ID, "bos_token_id": BOS_ID,
           "eos_token_id": EOS_ID}


def _llama() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=False, **_COMMON)
    return config, LlamaForCausalLM


def _qwen2() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    # Layers >= max_window_layers use a sliding window of 6 tokens: short enough to matter in tests.
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                         sliding_window=6, max_window_layers=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, **_COMMON)
    return config, Qwen2ForCausalLM


def _gpt2() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    config = GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=1024, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, **_COMMON)
    return config, GPT2LMHeadModel


def _glm() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    config = GlmConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=1024, **_COMMON)
    return config, GlmForCausalLM


TINY_MODELS: dict[str, Callable[[], tuple[PretrainedConfig, type[PreTrainedModel]]]] = {
    "tiny-llama": _llama,
    "tiny-qwen2": _qwen2,
    "tiny-gpt2": _gpt2,
    "tiny-glm": _glm,
}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte, plus pad/bos/eos) that needs no files."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        padding_side="left",
    )
    return tokenizer


def build_tiny(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny model with random weights drawn from ``seed``, and the byte tokenizer."""
    config, model_class = TINY_MODELS[name]()
    config._attn_implementation = "sdpa"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_class(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return model, byte_tokenizer()
