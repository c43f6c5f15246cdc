"""Family adapters: where each supported architecture keeps its embedding, blocks, norm and LM head.

A family adapter knows the Hugging Face module paths of one architecture family and how to call its
pieces. Everything else in splitfed is family-agnostic. ``REFUSED`` names model types that are
refused with a specific reason; any other unknown type is refused with the supported list.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from splitfed.models.families.base import (
    FULL_ATTENTION,
    SLIDING_ATTENTION,
    FamilyAdapter,
    UnsupportedModelError,
    module_at,
)
from splitfed.models.families.gemma import Gemma2Family, Gemma3TextFamily
from splitfed.models.families.gpt2 import GPT2Family
from splitfed.models.families.llama import LlamaStyleFamily, Phi3Family
from splitfed.models.families.moe import MoeFamily

__all__ = [
    "FAMILIES",
    "FULL_ATTENTION",
    "REFUSED",
    "SLIDING_ATTENTION",
    "FamilyAdapter",
    "GPT2Family",
    "Gemma2Family",
    "Gemma3TextFamily",
    "LlamaStyleFamily",
    "MoeFamily",
    "Phi3Family",
    "UnsupportedModelError",
    "family_for",
    "family_of_config",
    "hidden_size",
    "module_at",
    "supported_model_types",
]

FAMILIES: tuple[FamilyAdapter, ...] = (
    LlamaStyleFamily(),
    GPT2Family(),
    Gemma2Family(),
    Gemma3TextFamily(),
    Phi3Family(),
    MoeFamily(),
)

REFUSED: dict[str, str] = {
    "gemma3": (
        "multimodal Gemma 3 (Gemma3ForConditionalGeneration, with a SigLIP vision tower) is not split: "
        "image tokens enter the decoder after the embedding, which the client head does not run. "
        "Load the text-only model instead (Gemma3ForCausalLM with a Gemma3TextConfig, "
        "model_type 'gemma3_text')."
    ),
}


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` that has a family adapter."""
    return sorted(t for family in FAMILIES for t in family.model_types)


def family_for(model: nn.Module) -> FamilyAdapter:
    """The family adapter of ``model``, or a clear error naming the supported families."""
    return family_of_config(getattr(model, "config", None))


def hidden_size(config: Any) -> int:
    """The hidden size of a model (or part) ``config`` of any supported family."""
    return family_of_config(config).hidden_size(config)


def max_positions(config: Any) -> int | None:
    """The most positions a model (or part) ``config`` was built for; None where it names none. RoPE
    models compute past it, but what they output there was never trained: requests longer are refused."""
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def family_of_config(config: Any) -> FamilyAdapter:
    """The family adapter of a model ``config``; ``UnsupportedModelError`` says why there is none."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        reason = REFUSED[model_type]
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported by splitfed: {reason}")
    for family in FAMILIES:
        if model_type in family.model_types:
            family.check(config)
            return family
    supported = ", ".join(f"{f.name} ({', '.join(sorted(f.model_types))})" for f in FAMILIES)
    raise UnsupportedModelError(
        f"model_type {model_type!r} is not supported by splitfed. Supported families: {supported}. "
        "Another decoder-only model needs a small FamilyAdapter in splitfed/models/families/."
    )
