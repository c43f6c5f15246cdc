"""Prompt-lookup speculative decoding: several tokens per round trip to the server, the same tokens.

Over a wide-area link every decode step pays a round trip. A draft of the next few tokens is taken from
the context itself: the tokens that followed the most recent earlier occurrence of the context's last
n-gram (prompt lookup decoding). One step then sends the pending token and the draft through every
part, the tail's logits check each draft token with the client's own chooser, and every part's cache
drops the rejected ones. The chooser must be deterministic (greedy, penalized or not), so the output is
the one a token-per-step loop gives, up to floating-point summation order; a wrong draft costs only
the compute of its positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from splitfed.models.generation import TokenChoice, eos_tensor


def lookup_draft(tokens: list[int], size: int, max_ngram: int, min_ngram: int = 1) -> list[int]:
    """Up to ``size`` tokens that followed the latest earlier occurrence of the last n tokens of
    ``tokens``, trying n = ``max_ngram`` down to ``min_ngram``; empty when no such n-gram recurs."""
    if size < 1:
        return []
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        pattern = tokens[length - n:]
        for start in range(length - n - 1, -1, -1):
            if tokens[start:start + n] == pattern:
                return tokens[start + n:start + n + size]
    return []


def batch_draft(sequences: torch.Tensor, unfinished: torch.Tensor, size: int, max_ngram: int,
                pad_token_id: int, min_ngram: int = 1) -> torch.Tensor:
    """A draft of the same length for every row (B, k): the shortest of the unfinished rows' drafts
    (k = 0 when one of them has none); finished rows get padding."""
    drafts = {row: lookup_draft(sequences[row].tolist(), size, max_ngram, min_ngram)
              for row in range(len(sequences)) if bool(unfinished[row])}
    k = min((len(draft) for draft in drafts.values()), default=0)
    out = torch.full((len(sequences), k), pad_token_id, dtype=sequences.dtype, device=sequences.device)
    for row, draft in drafts.items():
        if k:
            out[row] = torch.tensor(draft[:k], dtype=sequences.dtype, device=sequences.device)
    return out


class LookupCounts:
    """What speculation did: decode steps sent, draft tokens sent and accepted."""

    def __init__(self) -> None:
        self.steps = 0
        self.drafted = 0
        self.accepted = 0

    def __repr__(self) -> str:
        return f"LookupCounts(steps={self.steps}, drafted={self.drafted}, accepted={self.accepted})"


def decode_speculative(
    logits: torch.Tensor,
    feed_many: Callable[[torch.Tensor], torch.Tensor],
    rewind: Callable[[int], None],
    sequences: torch.Tensor,
    max_new_tokens: int,
    choose: TokenChoice,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    draft_tokens: int = 8,
    max_ngram: int = 3,
    counts: LookupCounts | None = None,
    min_ngram: int = 1,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) as ``decode_tokens`` does, several per ``feed_many``.

    ``logits`` (B, V) follow ``sequences`` (B, T), all of it fed; ``feed_many(tokens)`` appends (B, n)
    tokens and returns the logits of those n positions (B, n, V); ``rewind(length)`` keeps the first
    ``length`` fed positions. After each step the fed context ends with the last accepted draft token:
    the last token yielded is not fed.
    """
    eos = eos_tensor(eos_token_id, logits.device)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if len(eos) else 0
    counts = counts if counts is not None else LookupCounts()
    unfinished = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    produced = 0
    pending = [choose(sequences, logits)]
    while True:
        for token in pending:
            token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
            yield token
            produced += 1
            unfinished &= ~torch.isin(token, eos)
            if not bool(unfinished.any()) or produced == max_new_tokens:
                return
        fed = sequences.shape[1]  # the last pending token is not fed yet
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        draft = batch_draft(sequences, unfinished, min(draft_tokens, max_new_tokens - produced - 1),
                            max_ngram, pad_token_id, min_ngram)
        step_logits = feed_many(torch.cat([token[:, None], draft], dim=1))
        accepted, chosen = _verify(sequences, draft, step_logits, unfinished, choose)
        counts.steps += 1
        counts.drafted += draft.shape[1]
        counts.accepted += accepted
        if accepted < draft.shape[1]:
            rewind(fed + 1 + accepted)
        sequences = torch.cat([sequences, draft[:, :accepted]], dim=1)
        pending = [draft[:, index] for index in range(accepted)] + [chosen]


def _verify(sequences: torch.Tensor, draft: torch.Tensor, step_logits: torch.Tensor, unfinished: torch.Tensor,
            choose: TokenChoice) -> tuple[int, torch.Tensor]:
    """How many draft tokens the chooser agrees with (in every unfinished row), and its own token at
    the first position it does not (or after the whole draft)."""
    for index in range(draft.shape[1] + 1):
        chosen = choose(torch.cat([sequences, draft[:, :index]], dim=1), step_logits[:, index])
        if index == draft.shape[1] or not bool(((chosen == draft[:, index]) | ~unfinished).all()):
            return index, chosen
    raise AssertionError("unreachable")
