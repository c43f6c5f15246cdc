"""Federated averaging of adapter states, weighted by samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_average(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """The weighted mean of ``states`` (same keys and shapes); weights need not sum to one."""
    _check_weights(states, weights)
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            raise ValueError("states to average have different keys")
    return {key: _mean([state[key] for state in states], weights) for key in states[0]}


def keywise_average(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Each key's weighted mean over the states that hold it (its weights renormalised among them):
    FedAvg when clients hold different blocks, each its own partition. With equal key sets this is
    ``weighted_average``."""
    _check_weights(states, weights)
    averaged = {}
    for key in dict.fromkeys(key for state in states for key in state):
        held = [(state[key], weight) for state, weight in zip(states, weights, strict=True) if key in state]
        averaged[key] = _mean([tensor for tensor, _ in held], [weight for _, weight in held])
    return averaged


def _check_weights(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> None:
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states, {len(weights)} weights")
    if float(sum(weights)) <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")


def _mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must have a positive sum, got {list(weights)}")
    return sum(t.double() * (w / total) for t, w in zip(tensors, weights, strict=True)).to(tensors[0].dtype)
