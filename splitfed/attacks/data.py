"""The attacker's public text and the victim's private rows, as token batches."""

from __future__ import annotations

from typing import Any

import torch

from splitfed.tasks import collate, encode_example, load_task
from splitfed.tasks.encoding import private_token_mask
from splitfed.tasks.public_text import PUBLIC_TEXT, clean_wikitext, public_chunks

__all__ = ["PUBLIC_TEXT", "clean_wikitext", "public_chunks", "victim_rows"]


def victim_rows(tokenizer: Any, task: str = "cb", split: str = "val", limit: int = 32,
                max_length: int = 128) -> dict[str, torch.Tensor]:
    """A real task's private rows (prompt + correct answer, answer-only labels), left-padded, with
    ``private`` (1 where a token carries the row's own text, not the template, the answer or padding)
    and ``prompt`` (1 on the prompt's tokens: what generation sends)."""
    examples = load_task(task, split, limit=limit)
    encoded = [encode_example(tokenizer, example, max_length) for example in examples]
    rows = collate(encoded, pad_token_id=int(tokenizer.pad_token_id))
    private = torch.zeros_like(rows["attention_mask"])
    for i, example in enumerate(examples):
        flags = private_token_mask(tokenizer, example, max_length)
        private[i, private.shape[1] - len(flags):] = torch.tensor(flags, dtype=private.dtype)
    rows["private"] = private
    rows["prompt"] = rows["attention_mask"] * (rows["labels"] == -100).long()
    return rows
