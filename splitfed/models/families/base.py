"""The family-adapter interface: where an architecture keeps its embedding, blocks, norm and LM head,
and how its pieces are called. Everything outside ``splitfed.models.families`` is family-agnostic."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


class UnsupportedModelError(ValueError):
    """Raised for a model whose architecture (or configuration) has no exact family adapter."""


class FamilyAdapter(ABC):
    """How one architecture family is laid out and called."""

    name: str
    model_types: frozenset[str]
    base_path: str
    layers_path: str
    embedding_paths: tuple[str, ...]
    shared_paths: tuple[str, ...]
    final_paths: tuple[str, ...]

    def layer_path(self, index: int) -> str:
        """Module path of decoder block ``index`` in the whole model."""
        return f"{self.layers_path}.{index}"

    def check(self, config: Any) -> None:
        """Raise ``UnsupportedModelError`` for a configuration of this family that the split would not
        compute exactly (the adapter's model types alone do not say so)."""
        return None

    @staticmethod
    def num_layers(config: Any) -> int:
        return int(config.num_hidden_layers)

    @staticmethod
    def hidden_size(config: Any) -> int:
        """Width of the hidden state that crosses the cut."""
        return int(config.hidden_size)

    @staticmethod
    def layer_types(config: Any) -> list[str]:
        """Attention kind of every layer: full or sliding window."""
        types = getattr(config, "layer_types", None)
        if types:
            return list(types)[: int(config.num_hidden_layers)]
        kind = SLIDING_ATTENTION if getattr(config, "sliding_window", None) else FULL_ATTENTION
        return [kind] * int(config.num_hidden_layers)

    @abstractmethod
    def embed(self, part: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> the hidden state that enters block 0."""

    def block_inputs(
        self, part: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[str, Any]:
        """Keyword arguments every block of this family needs besides the mask and cache."""
        return {"position_ids": position_ids}

    @abstractmethod
    def run_block(
        self,
        block: nn.Module,
        hidden: torch.Tensor,
        mask: Any,
        cache: Any,
        inputs: dict[str, Any],
    ) -> torch.Tensor:
        """Run one decoder block."""

    @abstractmethod
    def finalize(self, part: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden state after the last block -> logits."""


def module_at(root: nn.Module, path: str) -> nn.Module:
    """The submodule of ``root`` at dotted ``path``."""
    return root.get_submodule(path)
