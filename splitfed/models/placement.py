"""A trunk over several devices, and the plan that says whether it fits before anything is loaded.

``plan_trunk`` reads a model *configuration* only: it builds the model on PyTorch's ``meta`` device (no
memory, no weights), measures each decoder block, and cuts the trunk's blocks into contiguous runs, one
per device, balanced by parameter bytes. With the adapter, its optimizer state and a KV-cache budget it
says how much each device needs, and refuses a placement that does not fit.

``place_trunk`` applies a plan to a loaded trunk: each block moves to its device, and the trunk's
forward moves the hidden state (and the masks and rotary embeddings) from device to device between
blocks. The arithmetic is unchanged, so a trunk placed over several devices computes what it computes
on one (tested on CPU devices).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from splitfed.models.families import family_of_config
from splitfed.models.parts import TrunkPart
from splitfed.models.split import Partition

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_BYTES_PER_PARAMETER = 4 * 3  # fp32 weights + AdamW's two moments
GIB = 2**30


class PlacementError(ValueError):
    """A device that does not exist, or a placement that does not fit."""


@dataclass(frozen=True)
class DeviceShare:
    """What one device holds: a contiguous run of trunk blocks and the memory they need."""

    device: str
    blocks: tuple[int, ...]
    weight_bytes: int
    adapter_bytes: int  # adapter weights and optimizer state, fp32
    cache_bytes: int  # this device's share of the KV-cache budget
    capacity_bytes: int | None  # None: not known (not checked)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.adapter_bytes + self.cache_bytes

    @property
    def fits(self) -> bool:
        return self.capacity_bytes is None or self.total_bytes <= self.capacity_bytes


@dataclass(frozen=True)
class TrunkPlan:
    """Where every trunk block goes, and what each device needs."""

    model_type: str
    dtype: str
    trunk: tuple[int, int]  # blocks [start, stop)
    shares: tuple[DeviceShare, ...]
    kv_bytes_per_token: int  # over the whole trunk

    @property
    def fits(self) -> bool:
        return all(share.fits for share in self.shares)

    def device_of(self) -> dict[int, str]:
        return {block: share.device for share in self.shares for block in share.blocks}

    def to_json(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "dtype": self.dtype, "trunk": list(self.trunk),
                "kv_bytes_per_token": self.kv_bytes_per_token, "fits": self.fits,
                "devices": [{"device": s.device, "blocks": [s.blocks[0], s.blocks[-1] + 1],
                             "weight_bytes": s.weight_bytes, "adapter_bytes": s.adapter_bytes,
                             "cache_bytes": s.cache_bytes, "total_bytes": s.total_bytes,
                             "capacity_bytes": s.capacity_bytes, "fits": s.fits} for s in self.shares]}


def read_config(source: str | Path) -> PretrainedConfig:
    """A model configuration from a ``config.json`` file or a model directory (no weights read)."""
    path = Path(source).expanduser()
    if path.is_file():
        data = json.loads(path.read_text())
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise PlacementError(f"{path} has no model_type")
        return AutoConfig.for_model(model_type, **data)
    if path.is_dir() and (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    raise PlacementError(f"{source!r} is neither a config.json file nor a model directory with one")


def _meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The model of ``config`` on the meta device: shapes, no memory, no weights."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def block_bytes(config: PretrainedConfig, dtype: torch.dtype,
                model: torch.nn.Module | None = None) -> list[int]:
    """Parameter bytes of every decoder block in ``dtype``, from a model built on the meta device."""
    model = model if model is not None else _meta_model(config)
    family = family_of_config(config)
    size = torch.tensor([], dtype=dtype).element_size()
    return [sum(p.numel() for p in model.get_submodule(family.layer_path(i)).parameters()) * size
            for i in range(family.num_layers(config))]


def lora_parameters_per_block(config: PretrainedConfig, rank: int, targets: list[str],
                              model: torch.nn.Module | None = None) -> int:
    """Trainable LoRA parameters of one block: r x (in + out) per targeted linear layer."""
    model = model if model is not None else _meta_model(config)
    block = model.get_submodule(family_of_config(config).layer_path(0))
    total = 0
    for name, module in block.named_modules():
        if name.split(".")[-1] in targets and hasattr(module, "weight") and module.weight.dim() == 2:
            out_features, in_features = module.weight.shape
            total += rank * (in_features + out_features)
    return total


def kv_bytes_per_token_per_block(config: PretrainedConfig, dtype: torch.dtype) -> int:
    """Key and value bytes one token adds to one block's cache."""
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    return 2 * heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def contiguous_runs(sizes: list[int], parts: int) -> list[list[int]]:
    """Cut ``sizes`` (in order) into ``parts`` contiguous runs minimising the largest run's sum."""
    if parts < 1:
        raise PlacementError("give at least one device")
    if parts > len(sizes):
        raise PlacementError(f"{parts} devices for {len(sizes)} trunk blocks: at most one device per block")
    low, high = max(sizes), sum(sizes)
    while low < high:  # binary search on the largest run's size
        middle = (low + high) // 2
        if _runs_needed(sizes, middle) <= parts:
            high = middle
        else:
            low = middle + 1
    runs: list[list[int]] = []
    current: list[int] = []
    for index, size in enumerate(sizes):
        remaining_blocks = len(sizes) - index
        remaining_runs = parts - len(runs)
        if current and (sum(sizes[i] for i in current) + size > low or remaining_blocks < remaining_runs):
            runs.append(current)
            current = []
        current.append(index)
    runs.append(current)
    return runs


def _runs_needed(sizes: list[int], limit: int) -> int:
    runs, total = 1, 0
    for size in sizes:
        if total + size > limit:
            runs, total = runs + 1, 0
        total += size
    return runs


def available_devices() -> list[str]:
    """The devices of this machine, as a ``device`` setting names them."""
    return ["cpu", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]


def existing_device(name: str) -> torch.device:
    """``name`` as a ``torch.device`` (``cuda`` is ``cuda:0``) if this machine has it; else a
    ``PlacementError`` naming the devices it has."""
    available = ", ".join(available_devices())
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PlacementError(f"{name!r} is not a device: only cpu and cuda devices are supported, as auto, "
                             f"cpu, cuda or cuda:N (here: {available})") from None
    if device.type not in ("cpu", "cuda"):
        raise PlacementError(f"{name!r}: only cpu and cuda devices are supported (here: {available})")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        reason = "" if torch.cuda.is_available() else "; CUDA is not available here"
        raise PlacementError(f"{name!r} does not exist on this machine (here: {available}){reason}")
    return torch.device("cuda:0") if device.type == "cuda" and device.index is None else device


def device_capacity(device: str) -> int | None:
    """Memory of ``device`` in bytes (CUDA: its total memory; CPU: None, not checked); a device that
    does not exist is refused."""
    parsed = existing_device(device)
    return None if parsed.type == "cpu" else int(torch.cuda.get_device_properties(parsed).total_memory)


def plan_trunk(config: PretrainedConfig, partition: Partition, devices: list[str], dtype: str = "bfloat16",
               lora_rank: int = 8, lora_targets: list[str] | None = None, cache_tokens: int = 0,
               memory_gib: float | None = None) -> TrunkPlan:
    """The placement of the trunk's blocks over ``devices`` and each device's memory.

    ``cache_tokens``: tokens of KV cache to hold (over all generation streams); ``memory_gib``: every
    device's memory (default: what CUDA reports; unchecked on CPU).
    """
    if dtype not in DTYPES:
        raise PlacementError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    from splitfed.models.adapters import DEFAULT_LORA_TARGETS

    family = family_of_config(config)
    torch_dtype = DTYPES[dtype]
    _, trunk_range, _ = partition.ranges(family.num_layers(config))
    blocks = list(trunk_range)
    if not blocks:
        raise PlacementError("the partition leaves no block for the trunk")
    model = _meta_model(config)  # built once for the sizes and the adapter
    sizes = block_bytes(config, torch_dtype, model)
    runs = contiguous_runs([sizes[i] for i in blocks], len(devices))
    targets = lora_targets or DEFAULT_LORA_TARGETS[family.name]
    adapter_per_block = (lora_parameters_per_block(config, lora_rank, targets, model)
                         * ADAPTER_BYTES_PER_PARAMETER)
    kv_per_block = kv_bytes_per_token_per_block(config, torch_dtype)
    shares = []
    for device, run in zip(devices, runs, strict=True):
        try:
            capacity = int(memory_gib * GIB) if memory_gib is not None else device_capacity(device)
        except PlacementError as error:
            raise PlacementError(f"{error}; to plan for another machine, give its memory (--memory-gib)") \
                from None
        run_blocks = tuple(blocks[i] for i in run)
        count = len(run_blocks)
        shares.append(DeviceShare(device, run_blocks, sum(sizes[b] for b in run_blocks),
                                  adapter_per_block * count, kv_per_block * cache_tokens * count, capacity))
    return TrunkPlan(config.model_type, dtype, (blocks[0], blocks[-1] + 1), tuple(shares),
                     kv_per_block * len(blocks))


def place_trunk(trunk: TrunkPart, devices: list[str]) -> dict[int, torch.device]:
    """Move ``trunk``'s blocks onto ``devices`` (contiguous runs balanced by bytes); shared modules (the
    rotary embedding) stay on the first device. Returns block -> device."""
    for device in devices:
        device_capacity(device)  # refuses a device that does not exist
    family = trunk.family
    sizes = [sum(p.numel() * p.element_size() for p in trunk.get_submodule(family.layer_path(i)).parameters())
             for i in trunk.layer_indices]
    runs = contiguous_runs(sizes, len(devices))
    placement: dict[int, torch.device] = {}
    for device, run in zip(devices, runs, strict=True):
        for position in run:
            index = trunk.layer_indices[position]
            trunk.get_submodule(family.layer_path(index)).to(device)
            placement[index] = torch.device(device)
    for path in family.shared_paths:
        trunk.get_submodule(path).to(devices[0])
    trunk.placement = placement
    return placement


def format_plan(plan: TrunkPlan) -> list[str]:
    """Lines of a human-readable plan."""
    lines = [f"{plan.model_type}, {plan.dtype}: trunk blocks [{plan.trunk[0]}:{plan.trunk[1]}], "
             f"KV cache {plan.kv_bytes_per_token / 2**10:.1f} KiB per token"]
    for share in plan.shares:
        span = f"[{share.blocks[0]}:{share.blocks[-1] + 1}]"
        capacity = "not checked" if share.capacity_bytes is None else f"{share.capacity_bytes / GIB:.1f} GiB"
        verdict = "fits" if share.fits else "DOES NOT FIT"
        lines.append(f"  {share.device}: blocks {span} ({len(share.blocks)}): weights "
                     f"{share.weight_bytes / GIB:.2f} GiB + adapter and optimizer "
                     f"{share.adapter_bytes / GIB:.3f} GiB + KV cache {share.cache_bytes / GIB:.2f} GiB = "
                     f"{share.total_bytes / GIB:.2f} GiB of {capacity}: {verdict}")
    if not plan.fits:
        need = math.ceil(sum(s.total_bytes for s in plan.shares) / GIB)
        lines.append(f"refused: the trunk needs about {need} GiB in all; add devices, use a smaller dtype or "
                     "a smaller cache budget, or keep more blocks on the clients")
    return lines
