"""Load the shipped SuperGLUE cloze tasks, or a user's own file in a task's format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from splitfed.tasks.example import ClozeExample
from splitfed.tasks.files import DataError, read_task_rows
from splitfed.tasks.passages import PASSAGE_TEMPLATES
from splitfed.tasks.templates import TEMPLATES

DATA_DIR = Path(__file__).resolve().parent / "data"

# task -> split -> file under DATA_DIR (see data/SOURCES.md for provenance).
TASK_FILES: dict[str, dict[str, str]] = {
    "rte": {"train": "rte/train_hf_first1000.jsonl", "val": "rte/val.jsonl"},
    "cb": {"train": "cb/train_hf.jsonl", "val": "cb/val.jsonl"},
    "copa": {"train": "copa/train_hf.jsonl", "val": "copa/val.jsonl"},
    "boolq": {"train": "boolq/train_hf_first1000.jsonl", "val": "boolq/val_first500.jsonl"},
    "wic": {"train": "wic/fewglue_train32.jsonl", "val": "wic/val.jsonl"},
    "wsc": {"train": "wsc/train_hf.jsonl", "val": "wsc/val.jsonl"},
    "multirc": {"train": "multirc/fewglue_train32.jsonl", "val": "multirc/val_first20.jsonl"},
}
TASKS: tuple[str, ...] = tuple(TASK_FILES)
CLOZE_TASKS: tuple[str, ...] = (*TEMPLATES, *PASSAGE_TEMPLATES)
SPLITS: tuple[str, ...] = ("train", "val")


def available_tasks() -> list[str]:
    """Shipped cloze tasks, accepted by :func:`load_task`."""
    return list(TASKS)


def _task_key(task: str, known: tuple[str, ...] = CLOZE_TASKS) -> str:
    key = task.strip().lower()
    if key not in known:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(known)}")
    return key


def cloze_builder(task: str) -> Callable[[Any], list[ClozeExample]]:
    """Row -> cloze examples for any SuperGLUE cloze task (shipped or not, e.g. ``record``)."""
    key = _task_key(task)
    if key in PASSAGE_TEMPLATES:
        return PASSAGE_TEMPLATES[key]
    single = TEMPLATES[key]
    return lambda row: [single(row)]


def load_cloze_file(
    path: str | Path, task: str, limit: int | None = None, fmt: str | None = None, split: str | None = None
) -> list[ClozeExample]:
    """Read a file of ``task`` rows (official SuperGLUE or HF format, per row; any format of
    :func:`splitfed.tasks.files.read_rows`); the first ``limit`` examples."""
    build = cloze_builder(task)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = Path(path)
    examples: list[ClozeExample] = []
    for number, row in enumerate(read_task_rows(task, path, fmt, split), start=1):
        if limit is not None and len(examples) >= limit:
            break
        try:
            if not isinstance(row, dict):
                raise TypeError(f"a row must be an object with fields, got {type(row).__name__}")
            examples.extend(replace(example, source=f"{path}: row {number}") for example in build(row))
        except (ValueError, TypeError, KeyError) as err:
            raise DataError(f"task {task!r}: {path}: row {number}: {err}") from err
    return examples[:limit] if limit is not None else examples


def task_file(name: str, split: str = "val") -> Path:
    """Path of the shipped file for ``name``/``split``."""
    key = _task_key(name, TASKS)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return DATA_DIR / TASK_FILES[key][split]


def load_task(name: str, split: str = "val", limit: int | None = None) -> list[ClozeExample]:
    """Load the shipped ``train`` or ``val`` split of a task (first ``limit`` examples)."""
    return load_cloze_file(task_file(name, split), name, limit=limit)
