"""Rows longer than max_length are said (how many, the first) or refused naming task, file and row,
with the tokenizer alone; an answer that leaves no room for a prompt is always refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitfed.models.tiny import byte_tokenizer
from splitfed.tasks import DataError, TaskSpec, load_examples
from splitfed.tasks.lengths import check_lengths

SPEC = {"name": "reviews", "template": "Review: {text}\nSentiment:", "label_words": {"pos": "positive",
                                                                                   "neg": "negative"}}


def _examples(tmp_path: Path, rows: str):
    (tmp_path / "r.csv").write_text("text,label\n" + rows)
    return load_examples(TaskSpec(**SPEC, eval_file=tmp_path / "r.csv"), "val")


def test_long_rows_are_counted_with_the_first_or_refused_with_its_row(tmp_path: Path) -> None:
    examples = _examples(tmp_path, "short,pos\n" + "long " * 20 + ",neg\n" + "longer " * 30 + ",pos\n")
    tokenizer = byte_tokenizer()  # one token per byte
    report = check_lengths("reviews", examples, tokenizer, max_length=64)
    assert (report.rows, report.long) == (3, 2) and report.first.endswith("r.csv: row 2")
    assert "2 of 3 rows are longer than max_length 64" in report.describe()
    assert check_lengths("reviews", examples, tokenizer, max_length=512) is None
    refused = r"task 'reviews': .*r\.csv: row 2: \d+ tokens, longer than max_length 64"
    with pytest.raises(DataError, match=refused):
        check_lengths("reviews", examples, tokenizer, max_length=64, long_rows="refuse")


def test_an_answer_that_leaves_no_room_is_refused(tmp_path: Path) -> None:
    examples = _examples(tmp_path, "ok,pos\n")
    with pytest.raises(DataError, match=r"row 1: an answer of 9 tokens leaves no room .* max_length 9"):
        check_lengths("reviews", examples, byte_tokenizer(), max_length=9)
