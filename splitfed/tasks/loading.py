"""Load the shipped SuperGLUE cloze tasks, or a user's own JSONL file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from splitfed.tasks.example import ClozeExample
from splitfed.tasks.templates import TEMPLATES

DATA_DIR = Path(__file__).resolve().parent / "data"

# task -> split -> file under DATA_DIR (see data/SOURCES.md for provenance).
TASK_FILES: dict[str, dict[str, str]] = {
    "rte": {"train": "rte/train_hf_first1000.jsonl", "val": "rte/val.jsonl"},
    "cb": {"train": "cb/train_hf.jsonl", "val": "cb/val.jsonl"},
    "copa": {"train": "copa/train_hf.jsonl", "val": "copa/val.jsonl"},
    "boolq": {"train": "boolq/train_hf_first1000.jsonl", "val": "boolq/val_first500.jsonl"},
}
TASKS: tuple[str, ...] = tuple(TASK_FILES)
SPLITS: tuple[str, ...] = ("train", "val")


def available_tasks() -> list[str]:
    """Names accepted by :func:`load_task` and :func:`load_cloze_file`."""
    return list(TASKS)


def _task_key(task: str) -> str:
    key = task.strip().lower()
    if key not in TEMPLATES:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return key


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, json.loads(line)


def load_cloze_file(path: str | Path, task: str, limit: int | None = None) -> list[ClozeExample]:
    """Read a JSONL file of ``task`` rows (official SuperGLUE or HF format, per row)."""
    build = TEMPLATES[_task_key(task)]
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = Path(path)
    examples: list[ClozeExample] = []
    for lineno, row in _iter_jsonl(path):
        if limit is not None and len(examples) >= limit:
            break
        try:
            examples.append(build(row))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: {err}") from err
    return examples


def task_file(name: str, split: str = "val") -> Path:
    """Path of the shipped file for ``name``/``split``."""
    key = _task_key(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return DATA_DIR / TASK_FILES[key][split]


def load_task(name: str, split: str = "val", limit: int | None = None) -> list[ClozeExample]:
    """Load the shipped ``train`` or ``val`` split of a task (first ``limit`` rows)."""
    return load_cloze_file(task_file(name, split), name, limit=limit)
