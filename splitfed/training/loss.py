"""The causal language-modelling loss, computed where the labels are (on the client's tail)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def labelled_tokens(labels: torch.Tensor) -> int:
    """Tokens ``causal_lm_loss`` averages over for ``labels`` (the first position predicts nothing)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions, exactly as HF's ``ForCausalLMLoss``.

    ``labels`` are aligned with the inputs (not shifted); ``-100`` marks positions without a loss.
    """
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        shifted.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="mean",
    )
