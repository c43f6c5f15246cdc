"""Tiny random-initialised models with a byte-level tokenizer, for tests and quick demos."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GlmConfig,
    GlmForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
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


# The families below share these sizes; each adds what makes it differ from Llama, at values that
# matter for the tests' 14-token batches (windows of 4-6 tokens, soft caps that bite).
_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 1024, **_COMMON}


def _gemma2() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    # A larger init so that logits and attention scores reach the soft caps.
    config = Gemma2Config(head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                          final_logit_softcapping=2.0, attn_logit_softcapping=5.0,
                          initializer_range=0.2, **_SIZES)
    config._attn_implementation = "eager"  # HF's Gemma 2 has no SDPA path: SDPA cannot soft-cap
    return config, Gemma2ForCausalLM


def _gemma3() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    # Local (sliding) and global layers alternate, with rope bases 1e4 and 1e6 (Gemma 3's defaults).
    config = Gemma3TextConfig(head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                              sliding_window_pattern=2, final_logit_softcapping=2.0,
                              initializer_range=0.2, **_SIZES)
    return config, Gemma3ForCausalLM


def _phi3() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    # Phi-4-mini's partial rotary embedding and Phi-3-mini's sliding window, scaled down.
    config = Phi3Config(sliding_window=5, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": 0.5}, **_SIZES)
    return config, Phi3ForCausalLM


_MOE = {"num_experts_per_tok": 2, "initializer_range": 0.1}  # a larger init: decisive routing


def _mixtral() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    config = MixtralConfig(num_local_experts=4, tie_word_embeddings=False, **_MOE,
                           **{**_SIZES, "intermediate_size": 32})
    return config, MixtralForCausalLM


def _qwen2_moe() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    # A shared expert, one dense layer (2) and one sliding-window layer (0).
    config = Qwen2MoeConfig(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                            mlp_only_layers=[2], use_sliding_window=True, sliding_window=6,
                            max_window_layers=2, tie_word_embeddings=False, **_MOE, **_SIZES)
    return config, Qwen2MoeForCausalLM


def _qwen3_moe() -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    config = Qwen3MoeConfig(num_experts=4, moe_intermediate_size=32, head_dim=16, norm_topk_prob=True,
                            tie_word_embeddings=False, **_MOE, **_SIZES)
    return config, Qwen3MoeForCausalLM


TINY_MODELS: dict[str, Callable[[], tuple[PretrainedConfig, type[PreTrainedModel]]]] = {
    "tiny-llama": _llama,
    "tiny-qwen2": _qwen2,
    "tiny-gpt2": _gpt2,
    "tiny-glm": _glm,
    "tiny-gemma2": _gemma2,
    "tiny-gemma3": _gemma3,
    "tiny-phi3": _phi3,
    "tiny-mixtral": _mixtral,
    "tiny-qwen2-moe": _qwen2_moe,
    "tiny-qwen3-moe": _qwen3_moe,
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
    if config._attn_implementation is None:
        config._attn_implementation = "sdpa"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_class(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return model, byte_tokenizer()
