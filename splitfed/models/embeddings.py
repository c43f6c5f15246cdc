"""The token embedding matrix: what an attacker inverting hidden states compares them with."""

from __future__ import annotations

import torch
from torch import nn


def token_embedding_matrix(model: nn.Module) -> torch.Tensor:
    """The (vocab, hidden) input embedding weights of a causal LM, detached."""
    return model.get_input_embeddings().weight.detach()


def head_token_embeddings(head: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The token embeddings (no position embedding) a head part looks ``input_ids`` up in, detached."""
    table = head.get_submodule(head.family.embedding_paths[0])
    return table(input_ids).detach()
