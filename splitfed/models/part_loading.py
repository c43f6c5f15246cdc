"""Build only the modules a party runs, and read only their tensors, straight into the target dtype.

The model is built on the meta device (no memory); every module the party does not run is replaced
by a :class:`NotLoaded` placeholder (no parameters); then transformers' own loader reads the kept
modules' tensors from the weight files, one lazy slice at a time, applying the model's checkpoint
conversions (renamed keys, MoE experts fused on load) and casting to the target dtype as it reads.
Tied embeddings are read once and shared. Whatever is missing, mismatched or unreadable is refused
naming the file, and nothing half-loaded is returned.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import convert_and_load_state_dict_in_model
from transformers.modeling_utils import LoadStateDictConfig

from splitfed.memory import release_free_memory
from splitfed.models.families import FamilyAdapter, family_of_config
from splitfed.models.weight_files import ModelFileError, TensorReads, WeightFiles

log = logging.getLogger(__name__)

RELEASE_EVERY_BYTES = 256 * 2**20  # hand freed read buffers back to the system as loading goes


@dataclass(frozen=True)
class PartNeeds:
    """What one party runs: which decoder blocks, and whether the embedding and the final norm + LM
    head."""

    blocks: frozenset[int]
    embedding: bool
    final: bool

    def describe(self) -> str:
        pieces = (["embedding"] if self.embedding else []) + [_blocks_text(self.blocks)] + \
            (["final norm + LM head"] if self.final else [])
        return ", ".join(piece for piece in pieces if piece)


@dataclass(frozen=True)
class LoadReport:
    """What loading a part read, and how fast."""

    seconds: float
    tensors_read: int
    bytes_read: int  # bytes of the tensors read, as stored in the files
    part_bytes: int  # bytes of the part's parameters and buffers in memory (shared tensors once)

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_read / 2**20 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, float]:
        return {"seconds": self.seconds, "tensors_read": self.tensors_read, "bytes_read": self.bytes_read,
                "part_bytes": self.part_bytes, "mb_per_s": self.megabytes_per_second}


class NotLoaded(nn.Module):
    """Stands where a module of another party would be: it holds nothing and refuses to run."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self.path} is not loaded in this process: it belongs to another party")

    def extra_repr(self) -> str:
        return f"{self.path}: not loaded"


def _blocks_text(blocks: frozenset[int]) -> str:
    if not blocks:
        return ""
    ordered = sorted(blocks)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"blocks [{ordered[0]}:{ordered[-1] + 1}]"
    return "blocks " + ",".join(map(str, ordered))


def _replace(model: nn.Module, path: str) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    parent._modules[leaf] = NotLoaded(path)


def _tied_pairs(model: PreTrainedModel) -> dict[str, str]:
    """``{tied parameter: the parameter it shares}`` as transformers records it for this model."""
    return dict(getattr(model, "all_tied_weights_keys", None) or {})


def _module_exists(model: nn.Module, path: str) -> bool:
    try:
        return not isinstance(model.get_submodule(path), NotLoaded)
    except AttributeError:
        return False


def prune(model: PreTrainedModel, family: FamilyAdapter, needs: PartNeeds) -> None:
    """Replace every module ``needs`` does not ask for by :class:`NotLoaded` (in place). A tied LM head
    keeps the embedding module whose matrix it shares (one tensor, not attached to the head's part)."""
    shared_with_head = {_parameter_module(source) for target, source in _tied_pairs(model).items()
                        if _parameter_module(target) in family.final_paths}
    for index in range(family.num_layers(model.config)):
        if index not in needs.blocks:
            _replace(model, family.layer_path(index))
    if not needs.embedding:
        for path in family.embedding_paths:
            if not (needs.final and path in shared_with_head):
                _replace(model, path)
    if not needs.final:
        for path in family.final_paths:
            _replace(model, path)


def _parameter_module(name: str) -> str:
    return name.rpartition(".")[0]


def tie_kept(model: PreTrainedModel) -> set[str]:
    """Share tied parameters between the kept modules; the names tied (not read from any file)."""
    tied = set()
    for target, source in _tied_pairs(model).items():
        target_module, source_module = _parameter_module(target), _parameter_module(source)
        if _module_exists(model, target_module) and _module_exists(model, source_module):
            shared = model.get_parameter(source)
            setattr(model.get_submodule(target_module), target.rpartition(".")[2], shared)
            tied.add(target)
    return tied


def part_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each tensor counted once however often it is shared."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_meta or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total


def skeleton(config: Any, dtype: torch.dtype) -> PreTrainedModel:
    """The model's modules with their parameters on the meta device (buffers such as rotary
    frequencies are computed as usual: they are derived from the config, not read)."""
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=dtype)
    return model


def load_part_model(directory: Path, needs: PartNeeds, dtype: torch.dtype,
                    expected_sha256: dict[str, str] | None = None) -> tuple[PreTrainedModel, LoadReport]:
    """The model of ``directory`` with only ``needs`` built and read from its weight files; every other
    module is :class:`NotLoaded`. Refuses, naming the file, a weight file that is missing, truncated or
    corrupted, a tensor of the wrong shape, or a tensor the part needs and no file holds; with
    ``expected_sha256`` (a part's manifest) also a tensor whose bytes differ from it."""
    started = time.perf_counter()
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    family = family_of_config(config)
    files = WeightFiles.find(directory)
    model = skeleton(config, dtype)
    prune(model, family, needs)
    reads = TensorReads(expected_sha256=expected_sha256 or {}, every_bytes=RELEASE_EVERY_BYTES,
                        every=release_free_memory)
    with files.lazy_tensors(reads) as slices:
        load_config = LoadStateDictConfig(dtype=dtype, dtype_plan=model._get_dtype_plan(dtype),
                                          weight_mapping=get_model_conversion_mapping(model))
        info, _ = _quietly(convert_and_load_state_dict_in_model, model, slices, load_config)
    tied = tie_kept(model)
    _refuse_incomplete(model, directory, files, info, tied)
    model.eval()
    release_free_memory()
    report = LoadReport(time.perf_counter() - started, reads.tensors, reads.bytes, part_bytes(model))
    log.info("loaded %s of %s in %.1fs: %d tensors, %.0f MiB read (%.0f MB/s), %.0f MiB in memory",
             needs.describe(), directory, report.seconds, report.tensors_read, report.bytes_read / 2**20,
             report.megabytes_per_second, report.part_bytes / 2**20)
    return model, report


def _quietly(function: Any, *args: Any) -> Any:
    """Run transformers' loader without its progress bar (a part loads in seconds; we log instead)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return function(*args)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _refuse_incomplete(model: PreTrainedModel, directory: Path, files: WeightFiles, info: Any,
                       tied: set[str]) -> None:
    if info.mismatched_keys:
        name, found, expected = sorted(info.mismatched_keys, key=str)[0]
        raise ModelFileError(f"{files.source_of(name)}: tensor {name} has shape {tuple(found)}, the "
                             f"model's config.json says {tuple(expected)} ({len(info.mismatched_keys)} such "
                             "tensor(s))")
    if info.conversion_errors:
        name, reason = next(iter(info.conversion_errors.items()))
        raise ModelFileError(f"{directory}: tensor {name} could not be converted: {reason}")
    unread = sorted(name for name, tensor in [*model.named_parameters(), *model.named_buffers()]
                    if tensor.is_meta and name not in tied)
    if unread:
        shown = ", ".join(unread[:4]) + (f" and {len(unread) - 4} more" if len(unread) > 4 else "")
        raise ModelFileError(f"{directory}: {len(unread)} tensor(s) this part needs are in no weight file "
                             f"({shown}){files.describe_missing()}")
