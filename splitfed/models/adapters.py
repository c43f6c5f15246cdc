"""Adapters per part: LoRA (through peft) and prefix tuning; only adapter parameters train.

A part's adapter saves as a peft adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``) whose keys are those of the whole model, so the three parts' adapters
together are one adapter of the whole model.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from pathlib import Path
from typing import Annotated, Literal

import torch
from peft import LoraConfig, PrefixTuningConfig, inject_adapter_in_model
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from safetensors.torch import load_file, save_file
from torch import nn

from splitfed.finite import check_finite
from splitfed.models.parts import SplitPart
from splitfed.models.prefix import PrefixAdapter
from splitfed.models.sparse import SPARSE_FILE, load_sparse_state, sparse_state

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"
PEFT_PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SPLITFED_FILE = "splitfed_part.json"
PROMPT_KEY = "prompt_embeddings"

# Per family (``FamilyAdapter.name``): the attention projections, as in the LoRA paper. Phi-3 fuses
# q, k and v into one ``qkv_proj``; MoE experts are 3-D parameters, not linear modules, so the MoE
# default is the attention too (routers and experts stay frozen).
DEFAULT_LORA_TARGETS = {
    "llama-style": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "moe": ["q_proj", "v_proj"],
}


class LoraSpec(BaseModel):
    """LoRA on a part's linear layers."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["lora"] = Field("lora", description="selects LoRA")
    r: int = Field(8, ge=1, description="rank")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: delta = alpha / r * B @ A")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] | None = Field(
        None, description="module names to adapt; default: the family's attention projections"
    )


class PrefixSpec(BaseModel):
    """P-tuning v2 / prefix tuning on a part's own blocks."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["prefix"] = Field("prefix", description="selects prefix tuning")
    num_virtual_tokens: int = Field(8, ge=1, description="trainable key/value positions per block")
    init_std: float = Field(0.02, gt=0, description="standard deviation of their initialisation")


def _adapter_kind(value: object) -> str:
    """The adapter kind of a spec or of its raw mapping; LoRA when not said."""
    if isinstance(value, dict):
        return str(value.get("kind", "lora"))
    return str(getattr(value, "kind", "lora"))


AdapterSpec = Annotated[
    Annotated[LoraSpec, Tag("lora")] | Annotated[PrefixSpec, Tag("prefix")],
    Discriminator(_adapter_kind),
]


class AdapterError(ValueError):
    """An adapter that does not fit the part it is applied to."""


def add_adapter(part: SplitPart, spec: LoraSpec | PrefixSpec | None) -> None:
    """Inject ``spec`` into ``part`` and freeze every other parameter of the part."""
    if isinstance(spec, LoraSpec):
        _add_lora(part, spec)
    elif isinstance(spec, PrefixSpec):
        _add_prefix(part, spec)
    elif spec is not None:
        raise AdapterError(f"unknown adapter spec {spec!r}")
    for name, parameter in part.named_parameters():
        parameter.requires_grad_(is_adapter_parameter(name))
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()  # a half-precision base trains float32 adapters
    part.train(part.training)  # the new modules follow the part's mode (see set_training)


ROLE_SEED_OFFSETS = {"head": 1, "trunk": 2, "tail": 3}


def init_adapter(part: SplitPart, spec: LoraSpec | PrefixSpec | None, seed: int) -> None:
    """``add_adapter`` with the adapter's random init drawn from ``seed``, so that separate processes
    (server, clients) start from the same weights as one process. Each LoRA matrix is drawn from
    ``seed`` and its module's name alone: a block starts from the same weights whichever part holds it,
    so clients with different partitions agree (a prefix is drawn from ``seed`` and the part's role)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + ROLE_SEED_OFFSETS[part.role])
        add_adapter(part, spec)
    if isinstance(spec, LoraSpec):
        _draw_lora_per_module(part, seed)


def _draw_lora_per_module(part: SplitPart, seed: int) -> None:
    """Redraw every LoRA A matrix as peft draws it (Kaiming uniform, a = sqrt(5)) from a generator
    seeded by ``seed`` and the parameter's name (B stays zero)."""
    with torch.no_grad():
        for name, parameter in part.named_parameters():
            if ".lora_A." in name:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                drawn = torch.empty(parameter.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(drawn, a=math.sqrt(5), generator=generator)
                parameter.copy_(drawn)


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter name (in a part) belongs to an adapter."""
    return ".lora_" in name or name.startswith("prefix.") or ".sparse_delta." in name


def _add_lora(part: SplitPart, spec: LoraSpec) -> None:
    if not part.layer_indices:
        log.info("%s has no blocks: no LoRA injected", part.role)
        return
    config = lora_config(spec, part.family.name)
    inject_adapter_in_model(config, part, adapter_name=ADAPTER_NAME)
    part.lora_config = config


def lora_config(spec: LoraSpec, family_name: str) -> LoraConfig:
    """peft's LoraConfig for ``spec`` on a model of the family ``family_name``."""
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules or DEFAULT_LORA_TARGETS[family_name]),
        fan_in_fan_out=family_name == "gpt2",  # GPT-2's Conv1D stores weights transposed
        task_type="CAUSAL_LM",
    )


def _add_prefix(part: SplitPart, spec: PrefixSpec) -> None:
    if not part.layer_indices:
        log.info("%s has no blocks: no prefix injected", part.role)
        return
    dtype = next(part.parameters()).dtype
    part.prefix = PrefixAdapter(
        part.config, part.layer_indices, spec.num_virtual_tokens, spec.init_std, dtype
    )


def trainable_parameters(part: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``part`` that train, by name."""
    return {name: p for name, p in part.named_parameters() if p.requires_grad}


def adapter_state(part: SplitPart) -> dict[str, torch.Tensor]:
    """The part's adapter weights under their peft keys (detached copies on the CPU, wherever the part
    computes: they are saved, averaged and sent from there)."""
    state: dict[str, torch.Tensor] = {}
    for name, parameter in part.named_parameters():
        if ".lora_" in name:
            key = PEFT_PREFIX + name.replace(f".{ADAPTER_NAME}.", ".")
            state[key] = parameter.detach().to("cpu", copy=True)
    if part.prefix is not None:
        state[PROMPT_KEY] = part.prefix.embedding.weight.detach().to("cpu", copy=True)
    return state


def load_adapter_state(part: SplitPart, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter weights (peft keys, as from ``adapter_state``) into ``part``; all must match."""
    targets = _state_targets(part)
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise AdapterError(
            f"adapter does not fit the {part.role}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for key, parameter in targets.items():
            value = state[key]
            if value.shape != parameter.shape:
                raise AdapterError(f"{key}: shape {tuple(value.shape)} != {tuple(parameter.shape)}")
            parameter.copy_(value.to(parameter.dtype))


def _state_targets(part: SplitPart) -> dict[str, nn.Parameter]:
    targets = {
        PEFT_PREFIX + name.replace(f".{ADAPTER_NAME}.", "."): parameter
        for name, parameter in part.named_parameters()
        if ".lora_" in name
    }
    if part.prefix is not None:
        targets[PROMPT_KEY] = part.prefix.embedding.weight
    return targets


def save_adapter(part: SplitPart, directory: str | Path, base_model: str = "") -> Path:
    """Write the part's adapter as a peft adapter directory; returns the directory."""
    directory = Path(directory)
    state = {k: v.contiguous() for k, v in adapter_state(part).items()}
    sparse = sparse_state(part)
    check_finite({**state, **sparse}, f"the {part.role} adapter for {directory}")  # nothing poisoned is saved
    directory.mkdir(parents=True, exist_ok=True)
    if part.prefix is not None:
        config = PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=part.prefix.num_virtual_tokens,
            num_layers=len(part.layer_indices),
            token_dim=part.prefix.kv_heads * part.prefix.head_dim,
            num_attention_heads=part.prefix.kv_heads,
            base_model_name_or_path=base_model or None,
        )
        kind = "prefix"
    elif getattr(part, "lora_config", None) is not None:
        config = part.lora_config
        config.base_model_name_or_path = base_model or None
        kind = "lora"
    else:
        config, kind = None, "none"
    if config is not None:
        config.save_pretrained(str(directory))
    save_file(state, str(directory / WEIGHTS_FILE))
    if sparse:
        save_file({k: v.contiguous() for k, v in sparse.items()}, str(directory / SPARSE_FILE))
    meta = {
        "role": part.role,
        "kind": kind,
        "layers": list(part.layer_indices),
        "model_type": part.config.model_type,
        "sparse_entries": sum(int(v.numel()) for k, v in sparse.items() if k.endswith("_values")),
    }
    (directory / SPLITFED_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(splitfed metadata, weights) of a saved part adapter; safetensors only, never pickle."""
    directory = Path(directory)
    for name in (SPLITFED_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise AdapterError(f"{directory} is not a splitfed part adapter: {name} is missing")
    meta = json.loads((directory / SPLITFED_FILE).read_text())
    return meta, load_file(str(directory / WEIGHTS_FILE))


def load_adapter(part: SplitPart, directory: str | Path) -> None:
    """Inject the adapter saved in ``directory`` into ``part`` and load its weights."""
    meta, state = read_adapter(directory)
    if tuple(meta["layers"]) != part.layer_indices:
        raise AdapterError(
            f"adapter in {directory} was trained on blocks {meta['layers']}, "
            f"this {part.role} has {list(part.layer_indices)}"
        )
    if meta["kind"] == "lora":
        config = LoraConfig.from_pretrained(str(directory))
        spec = LoraSpec(
            r=config.r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=sorted(config.target_modules),
        )
        add_adapter(part, spec)
    elif meta["kind"] == "prefix":
        config = PrefixTuningConfig.from_pretrained(str(directory))
        add_adapter(part, PrefixSpec(num_virtual_tokens=config.num_virtual_tokens))
    load_adapter_state(part, state)
    sparse = read_sparse(directory)
    if sparse:
        load_sparse_state(part, sparse)


def read_sparse(directory: str | Path) -> dict[str, torch.Tensor]:
    """The sparse deltas (indices + values) saved beside a part adapter, or {} if none."""
    path = Path(directory) / SPARSE_FILE
    return load_file(str(path)) if path.is_file() else {}
