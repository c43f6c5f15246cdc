"""The unsplit model with the same adapters: the centralized baseline and the exactness reference."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import inject_adapter_in_model
from torch import nn
from transformers.cache_utils import DynamicCache

from splitfed.models.adapters import (
    ADAPTER_NAME,
    PROMPT_KEY,
    LoraSpec,
    PrefixSpec,
    is_adapter_parameter,
    load_adapter_state,
    lora_config,
)
from splitfed.models.families import family_for
from splitfed.models.parts import positions_from_mask
from splitfed.models.prefix import PrefixAdapter


class WholeModel(nn.Module):
    """A causal LM run by its own ``forward`` (no split), with LoRA or a prefix on every block."""

    def __init__(self, model: nn.Module, spec: LoraSpec | PrefixSpec | None = None) -> None:
        super().__init__()
        # The HF model's children are registered directly, so parameter names match the parts'
        # (``model.layers.3.self_attn.q_proj...``); the model itself is kept unregistered.
        self._hf = [model]
        for name, child in model.named_children():
            self.add_module(name, child)
        self.config = model.config
        self.family = family_for(model)
        self.layer_indices = tuple(range(self.family.num_layers(model.config)))
        self.prefix: PrefixAdapter | None = None
        if isinstance(spec, LoraSpec):
            inject_adapter_in_model(lora_config(spec, self.family.name), model, adapter_name=ADAPTER_NAME)
        elif isinstance(spec, PrefixSpec):
            dtype = next(model.parameters()).dtype
            self.prefix = PrefixAdapter(
                model.config, self.layer_indices, spec.num_virtual_tokens, spec.init_std, dtype
            )
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(is_adapter_parameter(name))

    @property
    def hf_model(self) -> nn.Module:
        """The wrapped Hugging Face model."""
        return self._hf[0]

    role = "whole"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the whole model, with positions from the mask (as the split model uses)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        device = next(self.parameters()).device  # batches come from the CPU
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        positions = positions_from_mask(attention_mask, input_ids.shape[1], 0, input_ids.device)
        cache = None
        if self.prefix is not None:
            cache = DynamicCache(config=self.config)
            self.prefix.fill_cache(cache, self.layer_indices, input_ids.shape[0])
            ones = attention_mask.new_ones(input_ids.shape[0], self.prefix.num_virtual_tokens)
            attention_mask = torch.cat([ones, attention_mask], dim=-1)
        output = self.hf_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return output.logits

    def load_part_states(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Load the adapters of head, trunk and tail (in that order) into the whole model."""
        merged: dict[str, torch.Tensor] = {}
        prompts = [s[PROMPT_KEY] for s in states if PROMPT_KEY in s]
        for state in states:
            merged.update({k: v for k, v in state.items() if k != PROMPT_KEY})
        if prompts:
            merged[PROMPT_KEY] = torch.cat(prompts, dim=1)
        load_adapter_state(self, merged)  # type: ignore[arg-type]


def whole_logits(model: nn.Module):
    """A ``(input_ids, attention_mask) -> logits`` function of the unsplit ``model`` (no gradients), with
    positions from the mask so that left-padded rows score like unpadded ones."""

    @torch.no_grad()
    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        positions = positions_from_mask(attention_mask, input_ids.shape[1], 0, input_ids.device)
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits

    return logits
