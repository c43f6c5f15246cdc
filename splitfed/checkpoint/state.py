"""Optimizer and random-number state as named tensors plus JSON (so checkpoints never need pickle)."""

from __future__ import annotations

from typing import Any

import torch


def optimizer_state(optimizer: torch.optim.Optimizer | None, prefix: str,
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors named ``prefix.<param index>.<name>``, JSON-safe rest) of ``optimizer.state_dict()``."""
    if optimizer is None:
        return {}, {}
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars,
            "indices": sorted(state_dict["state"])}
    return tensors, meta


def load_optimizer_state(optimizer: torch.optim.Optimizer | None, tensors: dict[str, torch.Tensor],
                         meta: dict[str, Any], prefix: str) -> None:
    """Restore what ``optimizer_state`` produced; a mismatch in parameters raises ``ValueError``."""
    if optimizer is None:
        if meta:
            raise ValueError("the checkpoint holds optimizer state but there is no optimizer")
        return
    state: dict[int, dict[str, Any]] = {}
    for index in meta["indices"]:
        entries = {key.rsplit(".", 1)[1]: value for key, value in tensors.items()
                   if key.startswith(f"{prefix}.{index}.")}
        entries.update(meta["scalars"].get(str(index), {}))
        state[int(index)] = entries
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> dict[str, torch.Tensor]:
    return {"rng/torch": torch.get_rng_state()}


def load_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
