"""Public text (WikiText-2): what an attacker and a defense's warm-up may both train on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from splitfed.tasks.loading import DATA_DIR

PUBLIC_TEXT = DATA_DIR / "wikitext2" / "test_first300k.raw"


def clean_wikitext(raw: str) -> str:
    """Wikitext-2 raw text without its ``= Heading =`` lines and CRLF line ends."""
    lines = raw.replace("\r\n", "\n").split("\n")
    kept = [line.strip() for line in lines if line.strip() and not re.fullmatch(r"\s*=.*=\s*", line)]
    return "\n".join(kept)


def public_chunks(tokenizer: Any, path: Path = PUBLIC_TEXT, tokens: int = 16384,
                  length: int = 64, skip_rows: int = 0) -> dict[str, torch.Tensor]:
    """About ``tokens`` tokens of public text in rows of ``length`` (each starting as the tokenizer
    starts a text, e.g. with BOS), with an attention mask of ones; ``skip_rows`` rows are passed over
    first (so two users of the same file can take disjoint rows)."""
    if not path.is_file():
        raise FileNotFoundError(f"public text {path} not found (wikitext-2 test.raw or any plain text)")
    prefix = list(tokenizer("")["input_ids"])
    body = length - len(prefix)
    if body < 2:
        raise ValueError(f"chunk length {length} is too short")
    text = clean_wikitext(path.read_text(encoding="utf-8"))
    rows = max(1, tokens // length)
    wanted = (rows + skip_rows) * body
    ids: list[int] = []
    for paragraph in text.split("\n"):
        ids.extend(tokenizer(paragraph + "\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= wanted:
            break
    available = len(ids) // body - skip_rows
    rows = min(rows, available)
    if rows <= 0:
        raise ValueError(f"{path} has fewer than {(skip_rows + 1) * body} tokens")
    start = skip_rows
    input_ids = torch.tensor([prefix + ids[(start + i) * body:(start + i + 1) * body] for i in range(rows)],
                             dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
