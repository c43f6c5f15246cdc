"""Rows longer than ``max_length`` tokens, found with the tokenizer before any model loads.

A classification row longer than ``max_length`` loses the start of its prompt (the answer is never
cut; ``encoding.join_prompt_option``), a generation row the start of its user turn: by default that is
said, with how many rows and the first one; with ``long_rows: refuse`` it is an error naming the
task, the file and the row. An answer that leaves no room for any prompt is always an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from splitfed.tasks.example import ClozeExample, GenerationExample
from splitfed.tasks.registry import DataError

LongRows = Literal["truncate", "refuse"]


@dataclass(frozen=True)
class LongRowReport:
    """How many of a task's rows exceed ``max_length``, and the first of them."""

    task: str
    rows: int
    long: int
    first: str
    max_length: int

    def describe(self) -> str:
        return (f"task {self.task!r}: {self.long} of {self.rows} rows are longer than max_length "
                f"{self.max_length} tokens and lose the start of their prompt (first: {self.first}); "
                "raise max_length, or set long_rows: refuse to stop instead")


def _tokens(tokenizer: Any, text: str, special: bool = True) -> int:
    return len(tokenizer(text, add_special_tokens=special)["input_ids"])


def check_lengths(task: str, examples: list[Any], tokenizer: Any, max_length: int,
                  long_rows: LongRows = "truncate") -> LongRowReport | None:
    """Refuse a row whose answer cannot fit, or (``refuse``) any row longer than ``max_length``;
    otherwise the report of the long rows (None when there are none)."""
    long, first = 0, ""
    for example in examples:
        where = example.source or "a row"
        if isinstance(example, ClozeExample):
            answer = max(_tokens(tokenizer, option, False) for option in example.options)
            if answer >= max_length:
                raise DataError(f"task {task!r}: {where}: an answer of {answer} tokens leaves no room for "
                                f"the prompt within max_length {max_length}: raise max_length")
            total = max(_tokens(tokenizer, example.prompt + option) for option in example.options)
        elif isinstance(example, GenerationExample):
            total = _tokens(tokenizer, (example.system or "") + example.user + example.target)
        else:
            continue
        if total > max_length:
            if long_rows == "refuse":
                raise DataError(f"task {task!r}: {where}: {total} tokens, longer than max_length "
                                f"{max_length} (long_rows: refuse); raise max_length or shorten the row")
            long += 1
            first = first or where
    return LongRowReport(task, len(examples), long, first, max_length) if long else None
