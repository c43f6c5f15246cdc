"""Sparse fine-tuning next to LoRA: our reading of the ICASSP 2024 paper's "SPF".

The paper names sparsification parameter fine-tuning but gives no algorithm. Ours:

1. *Select* on local data: accumulate, over a few batches, each targeted base weight's gradient of the
   training loss (``gradient``: score ``|sum_b g_b|``) or its squared gradient (``fisher``: the
   empirical Fisher diagonal per batch, ``sum_b g_b^2``).
2. *Allocate* ``round(density x targeted weights)`` entries to the modules in proportion to their
   sizes (largest remainder), and keep each module's top-scoring entries.
3. *Train* a value per selected entry (starting at 0) together with LoRA: a forward hook adds
   ``x D^T`` (``D`` holding the values at the indices) to the layer's output, computed entry by
   entry, so the base weight itself stays frozen and untouched.
4. *Store and send* the delta as flat ``indices`` (int64) + ``values``, never as a dense matrix, and
   *merge* it into the base weight on export.

Deltas are keyed by the module's path in the whole model (``model.layers.3.mlp.up_proj``), so a
part's deltas are deltas of the whole model, as with the adapters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers.pytorch_utils import Conv1D

DELTA = "sparse_delta"
INDICES = ".sparse_indices"
VALUES = ".sparse_values"
SPARSE_FILE = "sparse_delta.safetensors"
_BLOCK = re.compile(r"(^|\.)(layers|h)\.\d+\.")


class SparseSpec(BaseModel):
    """Which base weights may train sparsely, how many, and how they are chosen."""

    model_config = ConfigDict(extra="forbid")
    density: float = Field(0.001, gt=0, le=1, description="fraction of the targeted base weights that train")
    criterion: Literal["fisher", "gradient"] = Field(
        "fisher", description="fisher: sum of squared gradients; gradient: |sum of gradients|")
    target_modules: list[str] | None = Field(
        None, description="module name suffixes (e.g. up_proj); default: every linear layer of the blocks")
    selection_batches: int = Field(4, ge=1, description="local batches scored to choose the entries")


class SparseDelta(nn.Module):
    """Trainable values at fixed flat indices of one weight matrix.

    Applied without a dense matrix: ``y[..., out_k] += x[..., in_k] * values_k``, so the forward and the
    values' gradient cost O(tokens x entries), not a second full matmul.
    """

    def __init__(self, shape: tuple[int, ...], indices: torch.Tensor, dtype: torch.dtype,
                 transposed: bool = False) -> None:
        super().__init__()
        self.shape = tuple(shape)
        flat = indices.to(torch.int64).flatten().clone()
        rows, cols = flat // self.shape[1], flat % self.shape[1]
        outputs, inputs = (cols, rows) if transposed else (rows, cols)  # Conv1D stores (in, out)
        self.register_buffer("indices", flat, persistent=False)
        self.register_buffer("out_index", outputs, persistent=False)
        self.register_buffer("in_index", inputs, persistent=False)
        self.values = nn.Parameter(torch.zeros(flat.numel(), dtype=dtype))

    def add_to(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return output.index_add(-1, self.out_index, inputs[..., self.in_index] * self.values)


def _base(module: nn.Module) -> nn.Module:
    """The layer holding the frozen weight (peft's LoRA wraps it as ``base_layer``)."""
    return getattr(module, "base_layer", module)


def _apply_delta(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    return getattr(module, DELTA).add_to(inputs[0], output)


def _clean(name: str) -> str:
    return name.replace(".base_layer", "")


def sparse_targets(model: nn.Module, spec: SparseSpec) -> dict[str, nn.Module]:
    """The base layers (by whole-model path) whose weights may train sparsely."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | Conv1D) or not _BLOCK.search(name) or "lora_" in name:
            continue
        path = _clean(name)
        if spec.target_modules is None or any(path.endswith(s) for s in spec.target_modules):
            found[path] = module
    return found


def selection_scores(targets: dict[str, nn.Module], losses: Iterable[Callable[[], torch.Tensor]],
                     criterion: Literal["fisher", "gradient"]) -> dict[str, torch.Tensor]:
    """Per-entry scores of the targeted weights from the gradients of each loss (one per batch)."""
    weights = {path: module.weight for path, module in targets.items()}
    saved = {path: w.requires_grad for path, w in weights.items()}
    sums = {path: torch.zeros_like(w, dtype=torch.float32) for path, w in weights.items()}
    try:
        for weight in weights.values():
            weight.requires_grad_(True)
            weight.grad = None
        for loss in losses:
            grads = torch.autograd.grad(loss(), list(weights.values()), allow_unused=True)
            for path, grad in zip(weights, grads, strict=True):
                if grad is not None:
                    sums[path] += grad.float() ** 2 if criterion == "fisher" else grad.float()
    finally:
        for path, weight in weights.items():
            weight.requires_grad_(saved[path])
    return sums if criterion == "fisher" else {path: s.abs() for path, s in sums.items()}


def allocate(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Each module's top entries (sorted flat indices); counts proportional to module size, summing to
    ``round(density x total)`` (largest remainder)."""
    sizes = {path: s.numel() for path, s in scores.items()}
    total = round(density * sum(sizes.values()))
    exact = {path: total * n / sum(sizes.values()) for path, n in sizes.items()}
    counts = {path: int(value) for path, value in exact.items()}
    by_remainder = sorted(exact, key=lambda p: (exact[p] - counts[p], p), reverse=True)
    for path in by_remainder[: total - sum(counts.values())]:
        counts[path] += 1
    return {path: torch.sort(torch.topk(scores[path].flatten(), counts[path]).indices).values
            for path in scores if counts[path]}


def add_sparse(model: nn.Module, indices: dict[str, torch.Tensor]) -> int:
    """Attach a trainable zero delta at ``indices`` to each named base layer; returns the entries."""
    layers = {_clean(name): module for name, module in model.named_modules()}
    for path, flat in indices.items():
        if path not in layers:
            raise KeyError(f"no module {path} to attach a sparse delta to")
        layer = _base(layers[path])
        if hasattr(layer, DELTA):
            raise ValueError(f"{path} already has a sparse delta")
        delta = SparseDelta(tuple(layer.weight.shape), flat, layer.weight.dtype, isinstance(layer, Conv1D))
        layer.add_module(DELTA, delta)
        layer.register_forward_hook(_apply_delta)
    model.train(model.training)  # the new deltas follow the model's mode (see parts.set_training)
    return sum(int(flat.numel()) for flat in indices.values())


def select_and_add_sparse(model: nn.Module, spec: SparseSpec,
                          losses: Iterable[Callable[[], torch.Tensor]]) -> int:
    """Score the targets on local batches, choose the entries and attach the deltas."""
    scores = selection_scores(sparse_targets(model, spec), losses, spec.criterion)
    return add_sparse(model, allocate(scores, spec.density))


def _deltas(model: nn.Module) -> dict[str, SparseDelta]:
    return {_clean(name)[: -len(DELTA) - 1]: module for name, module in model.named_modules()
            if isinstance(module, SparseDelta)}


def sparse_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{path}.sparse_indices`` and ``{path}.sparse_values`` of every delta (detached copies)."""
    state: dict[str, torch.Tensor] = {}
    for path, delta in _deltas(model).items():
        state[path + INDICES] = delta.indices.clone()
        state[path + VALUES] = delta.values.detach().clone()
    return state


def load_sparse_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Attach (if needed) and load the deltas of ``sparse_state``; indices must match existing ones."""
    existing = _deltas(model)
    wanted = {key[: -len(INDICES)]: value for key, value in state.items() if key.endswith(INDICES)}
    add_sparse(model, {p: i for p, i in wanted.items() if p not in existing})
    existing = _deltas(model)
    with torch.no_grad():
        for path, flat in wanted.items():
            delta = existing[path]
            if not torch.equal(delta.indices, flat.to(torch.int64)):
                raise ValueError(f"{path}: the sparse delta's indices differ from the loaded ones")
            delta.values.copy_(state[path + VALUES].to(delta.values.dtype))


def merge_sparse_into(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Add the deltas of ``state`` (indices + values) to ``model``'s base weights; returns entries."""
    merged = 0
    with torch.no_grad():
        for key, flat in state.items():
            if not key.endswith(INDICES):
                continue
            path = key[: -len(INDICES)]
            weight = _base(model.get_submodule(path)).weight
            values = state[path + VALUES].to(weight.dtype)
            weight.view(-1).index_add_(0, flat.to(torch.int64), values)
            merged += int(flat.numel())
    return merged


def sparse_parameter_count(model: nn.Module) -> int:
    return sum(int(delta.values.numel()) for delta in _deltas(model).values())
