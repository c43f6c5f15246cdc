"""The one token loop of every generation in splitfed, and greedy generation of an in-process split.

``decode_tokens`` is shared by the in-process split (here) and the networked client
(``splitfed.inference.SplitGenerator``): choose a token per row, pad the rows that finished, stop at
EOS or the budget, feed the token back. In the split, the prefill sends the prompt through every part
once; each later step sends only the new token's hidden state (B x 1 x H) across each boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from splitfed.models.split import SplitModel

TokenChoice = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def eos_tensor(eos_token_id: int | list[int] | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """The end-of-sequence ids as a tensor (empty when there are none)."""
    ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
    return torch.tensor(list(ids), dtype=torch.long, device=device)


def greedy_choice(sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The most likely next token of every row: ``logits`` (B, V) -> (B,)."""
    return logits.argmax(dim=-1)


def decode_tokens(
    logits: torch.Tensor,
    feed: Callable[[torch.Tensor], torch.Tensor],
    sequences: torch.Tensor,
    max_new_tokens: int,
    choose: TokenChoice = greedy_choice,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,), as ``model.generate`` picks them.

    ``logits`` (B, V) are those of the position after ``sequences`` (B, T); ``feed(token)`` appends a
    (B,) token to the context and returns the logits of the next position. Rows that produced an EOS
    yield ``pad_token_id`` (the first EOS id by default); it stops when every row has finished or after
    ``max_new_tokens``. The last token yielded is not fed.
    """
    eos = eos_tensor(eos_token_id, logits.device)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if len(eos) else 0
    unfinished = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    for produced in range(1, max_new_tokens + 1):
        token = choose(sequences, logits)
        token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
        yield token
        unfinished &= ~torch.isin(token, eos)
        if not bool(unfinished.any()) or produced == max_new_tokens:
            return
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        logits = feed(token)


@torch.no_grad()
def iter_greedy(
    split: SplitModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> Iterator[torch.Tensor]:
    """Greedy tokens of an in-process split (shape (B,) each), through ``decode_tokens``."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    caches = split.new_caches()

    def feed(token: torch.Tensor) -> torch.Tensor:
        nonlocal mask
        mask = torch.cat([mask, mask.new_ones(len(token), 1)], dim=-1)
        return split(token[:, None], mask, caches=caches)[:, -1, :]

    if max_new_tokens < 1:
        return
    first = split(input_ids, mask, caches=caches)[:, -1, :]
    yield from decode_tokens(first, feed, input_ids, max_new_tokens, greedy_choice, eos_token_id,
                             pad_token_id)


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
