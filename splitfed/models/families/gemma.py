"""Gemma 2 and Gemma 3 (text): scaled embeddings, soft-capped logits, local/global attention layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitfed.models.families.base import UnsupportedModelError, module_at
from splitfed.models.families.llama import LlamaStyleFamily


class Gemma2Family(LlamaStyleFamily):
    """Gemma 2: Llama's layout with three differences, two of which live inside HF's modules.

    * The embedding is scaled by sqrt(hidden_size) inside ``embed_tokens`` (a scaled-embedding
      module), so the head's plain call is exact.
    * Attention logits are soft-capped inside each block (``attn_logit_softcapping``), and the
      pre/post feed-forward norms are block modules too.
    * Final logits are soft-capped (``cap * tanh(logits / cap)``) after the LM head: not a module,
      so ``finalize`` does it, in HF's order of operations.

    Sliding-window and full layers alternate (``config.layer_types``); each part builds both masks.
    """

    name = "gemma2"
    model_types = frozenset({"gemma2"})

    def finalize(self, part: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().finalize(part, hidden)
        cap = getattr(part.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


class Gemma3TextFamily(Gemma2Family):
    """Gemma 3's text decoder (``Gemma3ForCausalLM``): Gemma 2 plus per-layer-type rotary embeddings.

    Local (sliding-window) layers use one rope base, global layers another: the rotary module takes
    the layer type, so ``block_inputs`` computes both and ``run_block`` hands each block its own.
    HF's Gemma 3 block does not apply ``attn_logit_softcapping`` (it normalises queries and keys
    instead); the split calls the same block, so it matches whatever the block does.
    """

    name = "gemma3"
    model_types = frozenset({"gemma3_text"})

    def check(self, config: Any) -> None:
        if getattr(config, "use_bidirectional_attention", False):
            raise UnsupportedModelError(
                "Gemma 3 with use_bidirectional_attention (EmbeddingGemma) is an encoder, not a "
                "causal LM: splitfed splits causal decoders only."
            )

    def block_inputs(
        self, part: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[str, Any]:
        rotary = module_at(part, "model.rotary_emb")
        types = self.layer_types(part.config)
        kinds = sorted({types[index] for index in part.layer_indices})  # only the kinds this part runs
        embeddings = {kind: rotary(hidden, position_ids, kind) for kind in kinds}
        return {"position_ids": position_ids, "position_embeddings": embeddings}

    def run_block(self, block, hidden, mask, cache, inputs):
        kind = block.self_attn.layer_type
        return super().run_block(
            block, hidden, mask, cache, {**inputs, "position_embeddings": inputs["position_embeddings"][kind]}
        )
