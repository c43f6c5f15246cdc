"""Copies of a model for the parties of an in-process federation."""

from __future__ import annotations

import copy

from torch import nn


def replicate(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are the *same* tensors (frozen base weights are
    shared, as if each party had loaded the same checkpoint); adapters injected later are separate."""
    memo = {id(parameter): parameter for parameter in model.parameters()}
    return copy.deepcopy(model, memo)
