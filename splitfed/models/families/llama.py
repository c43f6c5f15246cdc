"""Llama-style decoders: rotary embeddings shared by all blocks, a final RMSNorm and an LM head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitfed.models.families.base import FamilyAdapter, module_at


class LlamaStyleFamily(FamilyAdapter):
    """Llama-style decoders with rotary embeddings: Llama, Mistral, Qwen2/3, SmolLM2, GLM, GLM-4."""

    name = "llama-style"
    model_types = frozenset({"llama", "mistral", "qwen2", "qwen3", "glm", "glm4"})
    base_path = "model"
    layers_path = "model.layers"
    embedding_paths = ("model.embed_tokens",)
    shared_paths = ("model.rotary_emb",)
    final_paths = ("model.norm", "lm_head")

    def embed(self, part: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return module_at(part, "model.embed_tokens")(input_ids)

    def block_inputs(
        self, part: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[str, Any]:
        rotary = module_at(part, "model.rotary_emb")
        return {"position_ids": position_ids, "position_embeddings": rotary(hidden, position_ids)}

    def run_block(self, block, hidden, mask, cache, inputs):
        return block(
            hidden,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=cache is not None,
            **inputs,
        )

    def finalize(self, part: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return module_at(part, "lm_head")(module_at(part, "model.norm")(hidden))


class Phi3Family(LlamaStyleFamily):
    """Phi-3 (and Phi-4-mini): Llama's layout and block call; attention and MLP are fused
    (``qkv_proj``, ``gate_up_proj``), which only changes the LoRA targets. Partial rotary embeddings
    and the optional sliding window are handled by the block and the mask (``layer_types``).

    Long-context checkpoints (``longrope``) switch rotary factors past
    ``original_max_position_embeddings``; HF's ``generate`` then recomputes the whole cache, the split's
    per-part caches do not, so split generation beyond that length is not token-identical."""

    name = "phi3"
    model_types = frozenset({"phi3"})
