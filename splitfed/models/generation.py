"""Greedy generation through head, trunk and tail, each part with its own KV cache.

The prefill sends the prompt through every part once; each later step sends only the new token's
hidden state (B x 1 x H) across each boundary.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from splitfed.models.split import SplitModel


@torch.no_grad()
def iter_greedy(
    split: SplitModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence (shape (B,)), as HF greedy ``generate`` picks them.

    Finished sequences (after an EOS) yield ``pad_token_id``; iteration stops when all are finished.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    eos = torch.tensor(
        [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int)
                                          else list(eos_token_id)),
        dtype=torch.long,
        device=input_ids.device,
    )
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if len(eos) else 0
    caches = split.new_caches()
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    step_ids = input_ids
    for _ in range(max_new_tokens):
        logits = split(step_ids, attention_mask, caches=caches)
        token = logits[:, -1, :].argmax(dim=-1)
        token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
        yield token
        unfinished &= ~torch.isin(token, eos)
        if not bool(unfinished.any()):
            return
        step_ids = token.unsqueeze(-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], dim=-1)


def generate_greedy(
    split: SplitModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Prompt followed by the greedy continuation, shaped like ``model.generate``'s output."""
    tokens = list(
        iter_greedy(split, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id)
    )
    if not tokens:
        return input_ids
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
