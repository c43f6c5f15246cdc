"""Sparse fine-tuning of the server's trunk, chosen from the clients' own gradients.

For its first ``selection_batches`` training steps the trunk also computes the gradients of its frozen
base weights (from the gradient each client sends down) and accumulates the selection scores; then it
attaches the sparse deltas and adds them to its optimizer. From then on LoRA and the deltas train
together. See ``splitfed.models.sparse`` for the method.
"""

from __future__ import annotations

import logging

import torch

from splitfed.models import SparseSpec, TrunkPart, add_sparse
from splitfed.models.sparse import allocate, sparse_targets

log = logging.getLogger(__name__)


class SparseSelection:
    """Accumulates Fisher / gradient scores of a trunk's targeted weights over training steps."""

    def __init__(self, trunk: TrunkPart, spec: SparseSpec) -> None:
        self.trunk, self.spec = trunk, spec
        self.targets = sparse_targets(trunk, spec)
        self.scores = {path: torch.zeros_like(m.weight, dtype=torch.float32)
                       for path, m in self.targets.items()}
        self.batches = 0

    @property
    def done(self) -> bool:
        return self.batches >= self.spec.selection_batches

    def before_forward(self) -> None:
        for module in self.targets.values():
            module.weight.requires_grad_(True)

    def after_backward(self) -> None:
        """Take this step's weight gradients into the scores and freeze the weights again."""
        for path, module in self.targets.items():
            grad = module.weight.grad
            if grad is not None:
                self.scores[path] += grad.float() ** 2 if self.spec.criterion == "fisher" else grad.float()
            module.weight.grad = None
            module.weight.requires_grad_(False)
        self.batches += 1

    def attach(self, optimizer: torch.optim.Optimizer | None) -> int:
        """Choose the entries, attach the deltas to the trunk and to ``optimizer``; returns the entries."""
        scores = self.scores
        if self.spec.criterion == "gradient":
            scores = {path: score.abs() for path, score in scores.items()}
        entries = attach_sparse(self.trunk, allocate(scores, self.spec.density), optimizer)
        log.info("sparse fine-tuning: %d trunk entries chosen by %s over %d steps", entries,
                 self.spec.criterion, self.batches)
        return entries


def attach_sparse(trunk: TrunkPart, indices: dict[str, torch.Tensor],
                  optimizer: torch.optim.Optimizer | None) -> int:
    """Attach deltas at ``indices`` and give their values to ``optimizer`` (as a new parameter group)."""
    before = {id(p) for p in trunk.parameters()}
    entries = add_sparse(trunk, indices)
    new = [p for p in trunk.parameters() if id(p) not in before]
    if optimizer is not None and new:
        optimizer.add_param_group({"params": new})
    return entries
