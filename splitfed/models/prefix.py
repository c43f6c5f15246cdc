"""P-tuning v2 / prefix tuning on one part's own layers (FL-GLM's method).

Every block of the part gets ``num_virtual_tokens`` trainable key/value vectors that every real token
attends to. The weight has the layout of peft's ``PrefixEncoder`` without projection (one embedding
row per virtual token, ``num_layers * 2 * kv_heads * head_dim`` wide), so a part's prefix saves in
peft's format and the three parts' prefixes concatenate into one whole-model prefix adapter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitfed.models.families import hidden_size


def attention_geometry(config: Any) -> tuple[int, int]:
    """(number of key/value heads, head dimension) of a Llama-style or GPT-2 config."""
    heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
    hidden = hidden_size(config)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    return kv_heads, head_dim


class PrefixAdapter(nn.Module):
    """Trainable per-layer key/value prefixes for the blocks ``layer_indices``."""

    def __init__(
        self,
        config: Any,
        layer_indices: tuple[int, ...],
        num_virtual_tokens: int,
        init_std: float = 0.02,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
        self.layer_indices = tuple(layer_indices)
        self.num_virtual_tokens = int(num_virtual_tokens)
        self.kv_heads, self.head_dim = attention_geometry(config)
        width = len(self.layer_indices) * 2 * self.kv_heads * self.head_dim
        self.embedding = nn.Embedding(self.num_virtual_tokens, width, dtype=dtype)
        nn.init.normal_(self.embedding.weight, std=init_std)

    def key_values(self) -> torch.Tensor:
        """Shape (layers * 2, kv_heads, tokens, head_dim): key of layer j at 2j, value at 2j + 1."""
        weight = self.embedding.weight.view(
            self.num_virtual_tokens, len(self.layer_indices) * 2, self.kv_heads, self.head_dim
        )
        return weight.permute(1, 2, 0, 3)

    def fill_cache(self, cache: Any, layer_indices: tuple[int, ...], batch: int) -> None:
        """Put the prefix into an empty ``cache`` as if it were past tokens of every sequence."""
        if tuple(layer_indices) != self.layer_indices:
            raise ValueError("prefix was built for other layers than this part's")
        key_values = self.key_values()
        for position, layer in enumerate(self.layer_indices):
            shape = (batch, self.kv_heads, self.num_virtual_tokens, self.head_dim)
            key = key_values[2 * position].unsqueeze(0).expand(shape)
            value = key_values[2 * position + 1].unsqueeze(0).expand(shape)
            cache.update(key, value, layer)
