"""Shipped data: row counts, integrity against data/SOURCES.md, and the loaders."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from splitfed.tasks import (
    DATA_DIR,
    TASKS,
    ClozeExample,
    available_tasks,
    load_cloze_file,
    load_task,
    task_file,
)

COUNTS = {
    ("rte", "train"): 1000,
    ("rte", "val"): 277,
    ("cb", "train"): 250,
    ("cb", "val"): 56,
    ("copa", "train"): 400,
    ("copa", "val"): 100,
    ("boolq", "train"): 1000,
    ("boolq", "val"): 500,
    ("wic", "train"): 32,
    ("wic", "val"): 638,
    ("wsc", "train"): 554,
    ("wsc", "val"): 104,
    ("multirc", "train"): 154,
    ("multirc", "val"): 1153,
}
# Label balance from data/SOURCES.md, as option indices (0 = yes / choice1).
LABELS = {
    ("rte", "val"): {0: 146, 1: 131},
    ("cb", "val"): {0: 23, 1: 28, 2: 5},
    ("cb", "train"): {0: 115, 1: 119, 2: 16},
    ("copa", "val"): {0: 55, 1: 45},
    ("boolq", "val"): {0: 315, 1: 185},
    ("boolq", "train"): {0: 624, 1: 376},
}


def test_available_tasks() -> None:
    assert available_tasks() == ["rte", "cb", "copa", "boolq", "wic", "wsc", "multirc"]
    assert list(TASKS) == available_tasks()


@pytest.mark.parametrize(("task", "split"), sorted(COUNTS))
def test_shipped_counts(task: str, split: str) -> None:
    examples = load_task(task, split)
    assert len(examples) == COUNTS[task, split]
    assert all(isinstance(ex, ClozeExample) for ex in examples)
    if (task, split) in LABELS:
        assert Counter(ex.label for ex in examples) == LABELS[task, split]


def test_shipped_files_match_sources_md_checksums() -> None:
    text = (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    sums = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.M))
    shipped = sorted(str(p.relative_to(DATA_DIR)) for p in DATA_DIR.glob("*/*.json*"))
    assert sorted(sums) == shipped
    for name, digest in sums.items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest, name


def test_first_val_rows_render_as_expected() -> None:
    rte = load_task("rte", "val", limit=1)[0]
    assert rte.prompt.endswith('"Christopher Reeve had an accident."?') and rte.label == 1
    cb = load_task("cb", "val", limit=2)[1]
    assert cb.prompt.endswith('"there is a shipment"?') and cb.answer == " maybe"
    copa = load_task("copa", "val", limit=1)[0]
    assert copa.answer == " water flowed from the spout"
    boolq = load_task("boolq", "train", limit=1)[0]  # HF row: answer true
    assert boolq.prompt.endswith("Question: do iran and afghanistan speak the same language? Answer:")
    assert boolq.answer == " yes"


def test_limit_and_case_insensitive_name() -> None:
    assert len(load_task("RTE", "train", limit=7)) == 7
    assert load_task("cb", limit=0) == []
    assert load_task("cb", limit=3) == load_task("cb", "val")[:3]


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="rte, cb, copa, boolq, wic, wsc, multirc"):
        load_task("record")  # a template, but no shipped data
    with pytest.raises(ValueError, match="valid tasks"):
        load_cloze_file(task_file("rte"), "nope")


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="train, val"):
        load_task("rte", "test")


def test_load_cloze_file_mixed_formats(tmp_path: Path) -> None:
    rows = [
        {"premise": "P1.", "hypothesis": "H1.", "label": "entailment", "idx": 0},
        {"premise": "P2.", "hypothesis": "H2.", "idx": 1, "label": 1},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    examples = load_cloze_file(path, "rte")
    assert [ex.prompt for ex in examples] == ['"P1." "H1."?', '"P2." "H2."?']
    assert [ex.label for ex in examples] == [0, 1]


def test_load_cloze_file_reports_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    ok = {"premise": "p", "hypothesis": "h", "label": 0}
    path.write_text(json.dumps(ok) + "\n" + json.dumps({**ok, "label": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"task 'cb': .*bad\.jsonl: row 2: label"):
        load_cloze_file(path, "cb")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"task 'rte': .*empty\.jsonl holds no rows"):
        load_cloze_file(empty, "rte")
