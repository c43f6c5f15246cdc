"""The token embedding matrix: what an attacker inverting hidden states compares them with."""

from __future__ import annotations

import torch
from torch import nn


def token_embedding_matrix(model: nn.Module) -> torch.Tensor:
    """The (vocab, hidden) input embedding weights of a causal LM, detached."""
    return model.get_input_embeddings().weight.detach()
