"""Nearest-neighbour inversion: each received vector to its closest token embedding."""

from __future__ import annotations

from typing import Literal

import torch

Metric = Literal["cosine", "l2"]


@torch.no_grad()
def nearest_tokens(hidden: torch.Tensor, embeddings: torch.Tensor, metric: Metric = "cosine",
                   chunk: int = 1024) -> torch.Tensor:
    """Token id of the embedding row nearest to every vector of ``hidden`` (``..., dim``)."""
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be cosine or l2, got {metric!r}")
    flat = hidden.reshape(-1, hidden.shape[-1]).float()
    table = embeddings.float()
    if metric == "cosine":
        table = torch.nn.functional.normalize(table, dim=-1)
    squared = (table * table).sum(-1)
    out = torch.empty(flat.shape[0], dtype=torch.long)
    for start in range(0, flat.shape[0], chunk):
        block = flat[start:start + chunk]
        dots = block @ table.T
        # L2: |h - e|^2 = |h|^2 - 2 h.e + |e|^2, and |h|^2 does not change the argmin
        out[start:start + chunk] = dots.argmax(-1) if metric == "cosine" else (squared - 2 * dots).argmin(-1)
    return out.reshape(hidden.shape[:-1])
