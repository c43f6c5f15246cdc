"""Score cloze options by log-likelihood under any causal LM and evaluate a task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from splitfed.tasks.encoding import IGNORE_INDEX, collate, encode_options
from splitfed.tasks.example import ClozeExample
from splitfed.tasks.metrics import accuracy, macro_f1

# (input_ids, attention_mask) -> logits (B, T, V), or an object with ``.logits``.
LogitsFn = Callable[[torch.Tensor, torch.Tensor], Any]


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: sum of log-probs of the labelled tokens (float64) and their count.

    ``labels`` are unshifted (position t is predicted by logits at t - 1); positions
    labelled -100 are ignored. Only labelled positions go through the softmax.
    """
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(logits.device)
    rows, cols = (shift_labels != IGNORE_INDEX).nonzero(as_tuple=True)
    logp = torch.log_softmax(shift_logits[rows, cols].float(), dim=-1)
    picked = logp.gather(-1, shift_labels[rows, cols].unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)
    sums.index_add_(0, rows, picked.double())
    counts = torch.bincount(rows, minlength=logits.shape[0])
    return sums.cpu(), counts.cpu()


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _score(
    logits_fn: LogitsFn,
    tokenizer: Any,
    examples: Sequence[ClozeExample],
    batch_size: int,
    max_length: int | None,
    device: torch.device | str | None,
) -> tuple[list[list[float]], list[list[int]]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = [
        (i, j, enc)
        for i, ex in enumerate(examples)
        for j, enc in enumerate(encode_options(tokenizer, ex, max_length))
    ]
    pairs.sort(key=lambda p: len(p[2]["input_ids"]))  # less padding per batch
    scores = [[0.0] * len(ex.options) for ex in examples]
    counts = [[0] * len(ex.options) for ex in examples]
    pad = _pad_id(tokenizer)
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = collate([enc for _, _, enc in chunk], pad, padding_side="left")
            ids, mask = batch["input_ids"], batch["attention_mask"]
            if device is not None:
                ids, mask = ids.to(device), mask.to(device)
            out = logits_fn(ids, mask)
            logits = getattr(out, "logits", out)
            sums, n = answer_logprobs(logits, batch["labels"])
            for k, (i, j, _) in enumerate(chunk):
                scores[i][j], counts[i][j] = float(sums[k]), int(n[k])
    return scores, counts


def score_options(
    logits_fn: LogitsFn,
    tokenizer: Any,
    examples: Sequence[ClozeExample],
    batch_size: int = 8,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> list[list[float]]:
    """Sum of log-probs of each option's tokens given its prompt, per example.

    ``(example, option)`` pairs are left-padded and run ``batch_size`` at a time under
    ``torch.no_grad()``; put the model in eval mode first. ``logits_fn`` may be a whole
    model or a split model; its inputs go to ``device`` when given. With left padding,
    a model that infers positions from ``attention_mask`` (or a ``logits_fn`` that
    passes ``position_ids``) scores exactly as without padding.
    """
    return _score(logits_fn, tokenizer, examples, batch_size, max_length, device)[0]


def predict(scores: Sequence[Sequence[float]]) -> list[int]:
    """Index of the highest-scoring option per example (first one on ties)."""
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


def evaluate_cloze(
    logits_fn: LogitsFn,
    tokenizer: Any,
    examples: Sequence[ClozeExample],
    batch_size: int = 8,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float | int]:
    """Accuracy, macro-F1, ``n`` and ``loss`` (correct-option NLL per answer token).

    ``loss`` is token-weighted over the whole set: total NLL of the correct options
    divided by their total number of tokens, as a training loss on the same batch.
    """
    if not examples:
        raise ValueError("no examples")
    scores, counts = _score(logits_fn, tokenizer, examples, batch_size, max_length, device)
    labels = [ex.label for ex in examples]
    preds = predict(scores)
    nll = -sum(s[y] for s, y in zip(scores, labels, strict=True))
    tokens = sum(c[y] for c, y in zip(counts, labels, strict=True))
    return {
        "accuracy": accuracy(preds, labels),
        "macro_f1": macro_f1(preds, labels),
        "n": len(examples),
        "loss": nll / tokens,
    }
