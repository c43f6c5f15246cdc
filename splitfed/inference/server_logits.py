"""The client's stand-in for the tail in the two-part layout: the server runs the LM head and returns the
last position's logits, so there is nothing left to run here."""

from __future__ import annotations

import torch
from torch import nn


class ServerLogits(nn.Module):
    """Passes through the logits the server returned (B, 1, V); has no cache."""

    def new_cache(self) -> None:
        return None

    def forward(self, logits: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: object = None,
                last_only: bool = True) -> torch.Tensor:
        return logits
