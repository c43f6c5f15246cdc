"""Copies of a model for the parties of an in-process federation."""

from __future__ import annotations

import copy

from torch import nn


def replicate(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are the *same* tensors (frozen base weights are
    shared, as if each party had loaded the same checkpoint); adapters injected later are separate."""
    memo = {id(parameter): parameter for parameter in model.parameters()}
    return copy.deepcopy(model, memo)


def replicate_frozen(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that shares its frozen parameters and copies the trainable ones
    (adapters): one frozen base in memory, one adapter per copy."""
    memo = {id(p): p for p in module.parameters() if not p.requires_grad}
    return copy.deepcopy(module, memo)


def storage_bytes(*objects: object) -> int:
    """Bytes of the distinct tensor storages reachable from modules, optimizers and tensors (shared
    storage counted once): what these objects really hold in memory."""
    import torch

    seen: dict[int, int] = {}

    def visit(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()

    for obj in objects:
        if isinstance(obj, nn.Module):
            for tensor in [*obj.parameters(), *obj.buffers()]:
                visit(tensor)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        visit(value)
        elif isinstance(obj, torch.Tensor):
            visit(obj)
    return sum(seen.values())
