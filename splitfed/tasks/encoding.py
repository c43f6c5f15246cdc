"""Tokenize cloze examples for answer-only training and pad them into batches.

The prompt is tokenized with the tokenizer's default special tokens (e.g. BOS) and
the option is appended as exact token ids, so the answer tokens are known without
searching. The option ids are the tail that ``prompt + option`` adds to the prompt's
own ids when the prompt's ids are a prefix of the joint ids (the usual case); only
when a token merges across the boundary are they the option tokenized alone with
``add_special_tokens=False``. This avoids the spurious leading-space token that
SentencePiece tokenizers emit for a lone ``" yes"``. Labels are not shifted.
"""

from __future__ import annotations

from typing import Any

import torch

from splitfed.tasks.example import ClozeExample

IGNORE_INDEX = -100
Encoded = dict[str, list[int]]


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def option_token_ids(tokenizer: Any, prompt: str, prompt_ids: list[int], option: str) -> list[int]:
    """Token ids that ``option`` adds after ``prompt`` (see module docstring)."""
    joint = _ids(tokenizer, prompt + option, True)
    n = len(prompt_ids)
    if len(joint) > n and joint[:n] == prompt_ids:
        return joint[n:]
    return _ids(tokenizer, option, False)


def join_prompt_option(
    prompt_ids: list[int],
    option_ids: list[int],
    max_length: int | None = None,
    bos_token_id: int | None = None,
) -> Encoded:
    """Concatenate ids, mask the prompt in ``labels``, truncate the prompt from the left.

    A leading ``bos_token_id`` survives truncation. The answer is never cut; at least
    one prompt token is kept so the first answer token has something to follow.
    """
    if not option_ids:
        raise ValueError("the option encodes to no tokens")
    if max_length is not None:
        budget = max_length - len(option_ids)
        if budget < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for the prompt and a {len(option_ids)}-token answer"
            )
        if len(prompt_ids) > budget:
            keep_bos = bos_token_id is not None and prompt_ids[0] == bos_token_id and budget > 1
            if keep_bos:
                prompt_ids = [prompt_ids[0], *prompt_ids[len(prompt_ids) - budget + 1 :]]
            else:
                prompt_ids = prompt_ids[len(prompt_ids) - budget :]
    return {
        "input_ids": [*prompt_ids, *option_ids],
        "labels": [IGNORE_INDEX] * len(prompt_ids) + list(option_ids),
    }


def encode_options(tokenizer: Any, example: ClozeExample, max_length: int | None = None) -> list[Encoded]:
    """Encode ``prompt + option`` for every option of ``example`` (labels on the option)."""
    prompt_ids = _ids(tokenizer, example.prompt, True)
    bos = getattr(tokenizer, "bos_token_id", None)
    return [
        join_prompt_option(
            prompt_ids,
            option_token_ids(tokenizer, example.prompt, prompt_ids, opt),
            max_length,
            bos,
        )
        for opt in example.options
    ]


def encode_example(tokenizer: Any, example: ClozeExample, max_length: int | None = None) -> Encoded:
    """Encode ``prompt + correct option`` for training: ``input_ids`` and ``labels``."""
    prompt_ids = _ids(tokenizer, example.prompt, True)
    option_ids = option_token_ids(tokenizer, example.prompt, prompt_ids, example.answer)
    bos = getattr(tokenizer, "bos_token_id", None)
    return join_prompt_option(prompt_ids, option_ids, max_length, bos)


def collate(batch: list[Encoded], pad_token_id: int, padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Pad encoded rows to one int64 batch: ``input_ids``, ``attention_mask``, ``labels``."""
    if not batch:
        raise ValueError("empty batch")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(row["input_ids"]) for row in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(batch):
        n = len(row["input_ids"])
        if len(row["labels"]) != n:
            raise ValueError(f"row {i}: input_ids and labels differ in length")
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[i, cols] = torch.tensor(row["input_ids"], dtype=torch.long)
        attention_mask[i, cols] = 1
        labels[i, cols] = torch.tensor(row["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def private_token_mask(tokenizer: Any, example: ClozeExample, max_length: int | None = None) -> list[bool]:
    """Per token of ``encode_example(tokenizer, example, max_length)``: does it carry the row's own text?

    A token is private when its characters overlap one of ``example.private_spans`` (a token that
    straddles the template and the text counts as private); special tokens and the answer are not.
    Without spans every non-special prompt token counts as private."""
    encoded = tokenizer(example.prompt, add_special_tokens=True, return_offsets_mapping=True)
    offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
    spans = example.private_spans or ((0, len(example.prompt)),)
    flags = [end > start and any(start < b and end > a for a, b in spans) for start, end in offsets]
    prompt_ids = list(encoded["input_ids"])
    option_ids = option_token_ids(tokenizer, example.prompt, prompt_ids, example.answer)
    bos = getattr(tokenizer, "bos_token_id", None)
    has_bos = bos is not None and bool(prompt_ids) and prompt_ids[0] == bos
    kept = join_prompt_option(list(range(len(prompt_ids))), option_ids, max_length, 0 if has_bos else None)
    n_prompt = len(kept["input_ids"]) - len(option_ids)
    return [flags[i] for i in kept["input_ids"][:n_prompt]] + [False] * len(option_ids)
