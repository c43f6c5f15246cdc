"""Federated averaging of adapter states, weighted by samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_average(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """The weighted mean of ``states`` (same keys and shapes); weights need not sum to one."""
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states, {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            raise ValueError("states to average have different keys")
    return {
        key: sum(state[key].double() * (w / total) for state, w in zip(states, weights, strict=True))
        .to(states[0][key].dtype)
        for key in states[0]
    }


def keywise_average(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Each key's weighted mean over the states that hold it (its weights renormalised among them):
    FedAvg when clients hold different blocks, each its own partition. With equal key sets this is
    ``weighted_average``."""
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states, {len(weights)} weights")
    keys = dict.fromkeys(key for state in states for key in state)
    averaged = {}
    for key in keys:
        held = [(state[key], weight) for state, weight in zip(states, weights, strict=True) if key in state]
        averaged[key] = weighted_average([{key: tensor} for tensor, _ in held], [w for _, w in held])[key]
    return averaged
