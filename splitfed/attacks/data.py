"""The attacker's public text and the victim's private rows, as token batches."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from splitfed.tasks import collate, encode_example, load_task

PUBLIC_TEXT = Path("/work/shared/data/wikitext2/test.raw")


def clean_wikitext(raw: str) -> str:
    """Wikitext-2 raw text without its ``= Heading =`` lines and CRLF line ends."""
    lines = raw.replace("\r\n", "\n").split("\n")
    kept = [line.strip() for line in lines if line.strip() and not re.fullmatch(r"\s*=.*=\s*", line)]
    return "\n".join(kept)


def public_chunks(tokenizer: Any, path: Path = PUBLIC_TEXT, tokens: int = 16384,
                  length: int = 64) -> dict[str, torch.Tensor]:
    """About ``tokens`` tokens of public text in rows of ``length`` (each starting as the tokenizer
    starts a text, e.g. with BOS), with an attention mask of ones."""
    if not path.is_file():
        raise FileNotFoundError(f"public text {path} not found (wikitext-2 test.raw or any plain text)")
    prefix = list(tokenizer("")["input_ids"])
    body = length - len(prefix)
    if body < 2:
        raise ValueError(f"chunk length {length} is too short")
    text = clean_wikitext(path.read_text(encoding="utf-8"))
    rows = max(1, tokens // length)
    ids: list[int] = []
    for paragraph in text.split("\n"):
        ids.extend(tokenizer(paragraph + "\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= rows * body:
            break
    rows = min(rows, len(ids) // body)
    if rows == 0:
        raise ValueError(f"{path} has fewer than {body} tokens")
    input_ids = torch.tensor([prefix + ids[i * body:(i + 1) * body] for i in range(rows)], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def victim_rows(tokenizer: Any, task: str = "cb", split: str = "val", limit: int = 32,
                max_length: int = 128) -> dict[str, torch.Tensor]:
    """A real task's private rows (prompt + correct answer, answer-only labels), left-padded."""
    examples = load_task(task, split, limit=limit)
    encoded = [encode_example(tokenizer, example, max_length) for example in examples]
    return collate(encoded, pad_token_id=int(tokenizer.pad_token_id))
