"""Optimizer settings shared by every trainable part (client head/tail, server trunk, centralized)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import BaseModel, ConfigDict, Field


class OptimizerSettings(BaseModel):
    """AdamW hyper-parameters."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(2e-4, gt=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="decay rates of the moment estimates")
    eps: float = Field(1e-8, gt=0, description="added to the denominator for stability")

    def build(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
        """An AdamW over ``parameters``, or None when there is nothing to train."""
        parameters = [p for p in parameters if p.requires_grad]
        if not parameters:
            return None
        return torch.optim.AdamW(
            parameters, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas, eps=self.eps
        )
