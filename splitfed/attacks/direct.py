"""Direct forward: the server runs the public pretrained tail on the trunk output it computed."""

from __future__ import annotations

import torch

from splitfed.models import TailPart


@torch.no_grad()
def direct_forward(tail: TailPart, trunk_output: torch.Tensor, attention_mask: torch.Tensor,
                   input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The public tail's greedy next-token guesses at every position, and what they guess.

    Returns ``(predicted, target, mask)``: ``predicted[:, t]`` is the argmax of the tail's logits at
    ``t``, compared with the private token ``input_ids[:, t + 1]``; ``mask`` keeps the positions whose
    next token is real (the last position has none).
    """
    logits = tail(trunk_output, attention_mask)
    predicted = logits[:, :-1].argmax(-1).cpu()
    target = input_ids[:, 1:]
    mask = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
    return predicted, target, mask
