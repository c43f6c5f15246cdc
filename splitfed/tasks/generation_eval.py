"""Evaluate a generation task: greedy answers through any generator, scored against references."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from splitfed.tasks.chat import prompt_ids
from splitfed.tasks.encoding import collate
from splitfed.tasks.example import GenerationExample
from splitfed.tasks.text_metrics import exact_match, rouge, squad_f1

# (input_ids, attention_mask, max_new_tokens) -> the new tokens, shape (B, <= max_new_tokens)
GenerateFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
GENERATION_METRICS: tuple[str, ...] = ("rouge", "squad_f1")


def _decode(tokenizer: Any, tokens: Sequence[int]) -> str:
    eos = tokenizer.eos_token_id
    cut = list(tokens)
    if eos is not None and eos in cut:
        cut = cut[: cut.index(eos)]
    return tokenizer.decode(cut, skip_special_tokens=True).strip()


def generate_answers(
    generate_fn: GenerateFn,
    tokenizer: Any,
    examples: Sequence[GenerationExample],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    max_prompt_length: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers in the order of ``examples`` (prompts left-padded, batched by length)."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    prompts = []
    for example in examples:
        ids = prompt_ids(tokenizer, example)
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            ids = ids[len(ids) - max_prompt_length :]
        prompts.append(ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    answers = [""] * len(examples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([{"input_ids": prompts[i], "labels": prompts[i]} for i in chunk], int(pad))
        new = generate_fn(batch["input_ids"], batch["attention_mask"], max_new_tokens)
        for row, i in enumerate(chunk):
            answers[i] = _decode(tokenizer, new[row].tolist())
        if on_batch is not None:
            on_batch(len(chunk))
    return answers


def score_generation(
    metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """``rouge``: rouge1/rouge2/rougeL; ``squad_f1``: f1 and exact_match. All in [0, 1]."""
    if metric == "rouge":
        return rouge(predictions, references)
    if metric == "squad_f1":
        return {"f1": squad_f1(predictions, references), "exact_match": exact_match(predictions, references)}
    raise ValueError(f"unknown generation metric {metric!r}; valid: {', '.join(GENERATION_METRICS)}")


def evaluate_generation(
    generate_fn: GenerateFn,
    tokenizer: Any,
    examples: Sequence[GenerationExample],
    metric: str,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    max_prompt_length: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The metric's scores, ``n`` and the first few predictions (for a look by eye)."""
    if not examples:
        raise ValueError("no examples")
    predictions = generate_answers(generate_fn, tokenizer, examples, max_new_tokens, batch_size,
                                   max_prompt_length, on_batch)
    scores: dict[str, Any] = score_generation(metric, predictions, [e.references for e in examples])
    scores["n"] = len(examples)
    scores["samples"] = [{"prediction": p, "reference": e.references[0]}
                         for p, e in list(zip(predictions, examples, strict=True))[:3]]
    return scores
