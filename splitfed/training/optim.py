"""Optimizer settings shared by every trainable part (client head/tail, server trunk, centralized)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import BaseModel, ConfigDict, Field


class OptimizerSettings(BaseModel):
    """AdamW hyper-parameters."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)

    def build(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
        """An AdamW over ``parameters``, or None when there is nothing to train."""
        parameters = [p for p in parameters if p.requires_grad]
        if not parameters:
            return None
        return torch.optim.AdamW(
            parameters, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas, eps=self.eps
        )
