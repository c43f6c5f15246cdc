"""GPT-2: learned absolute positions, Conv1D projections."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitfed.models.families.base import FamilyAdapter, module_at


class GPT2Family(FamilyAdapter):
    """GPT-2: learned absolute positions and dropout belong to the head."""

    name = "gpt2"
    model_types = frozenset({"gpt2"})
    base_path = "transformer"
    layers_path = "transformer.h"
    embedding_paths = ("transformer.wte", "transformer.wpe", "transformer.drop")
    shared_paths = ()
    final_paths = ("transformer.ln_f", "lm_head")

    @staticmethod
    def hidden_size(config: Any) -> int:
        return int(config.n_embd)

    @staticmethod
    def num_layers(config: Any) -> int:
        return int(config.n_layer)

    def embed(self, part: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        tokens = module_at(part, "transformer.wte")(input_ids)
        positions = module_at(part, "transformer.wpe")(position_ids)
        return module_at(part, "transformer.drop")(tokens + positions)

    def run_block(self, block, hidden, mask, cache, inputs):
        return block(
            hidden,
            past_key_values=cache,
            attention_mask=mask,
            use_cache=cache is not None,
            **inputs,
        )

    def finalize(self, part: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return module_at(part, "lm_head")(module_at(part, "transformer.ln_f")(hidden))
