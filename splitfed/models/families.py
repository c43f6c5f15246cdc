"""Family adapters: where each supported architecture keeps its embedding, blocks, norm and LM head.

A family adapter knows the Hugging Face module paths of one architecture family and how to call its
pieces. Everything else in splitfed is family-agnostic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


class UnsupportedModelError(ValueError):
    """Raised for a model whose architecture has no family adapter."""


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


FAMILIES: tuple[FamilyAdapter, ...] = (LlamaStyleFamily(), GPT2Family())


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` that has a family adapter."""
    return sorted(t for family in FAMILIES for t in family.model_types)


def family_for(model: nn.Module) -> FamilyAdapter:
    """The family adapter of ``model``, or a clear error naming the supported families."""
    return family_of_config(getattr(model, "config", None))


def hidden_size(config: Any) -> int:
    """The hidden size of a model (or part) ``config`` of any supported family."""
    return family_of_config(config).hidden_size(config)


def family_of_config(config: Any) -> FamilyAdapter:
    """The family adapter of a model ``config``."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{f.name} ({', '.join(sorted(f.model_types))})" for f in FAMILIES)
    raise UnsupportedModelError(
        f"model_type {model_type!r} is not supported by splitfed. Supported families: {supported}. "
        "Another decoder-only model needs a small FamilyAdapter in splitfed/models/families.py."
    )
