"""One entry point for every task: shipped SuperGLUE and generation tasks, or a :class:`TaskSpec`."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from splitfed.tasks.chat import GENERATION_METRICS, GENERATION_TEMPLATES
from splitfed.tasks.custom import TaskSpec, custom_cloze, custom_generation
from splitfed.tasks.example import ClozeExample, GenerationExample
from splitfed.tasks.files import DataError, read_task_rows
from splitfed.tasks.loading import CLOZE_TASKS, DATA_DIR, TASK_FILES, cloze_builder

# Shipped generation data (see data/SOURCES.md). CoQA ships one story: enough to try, not to score.
GENERATION_FILES: dict[str, dict[str, str]] = {
    "xsum": {"train": "xsum/test_rows101-220.jsonl", "val": "xsum/test_first100.jsonl"},
    "coqa": {"val": "coqa/dev_sample.json"},
}
SHIPPED_TASKS: tuple[str, ...] = (*TASK_FILES, *GENERATION_FILES)
Example = ClozeExample | GenerationExample


@dataclass
class TaskData:
    """A task's name, kind (classification / generation), metric and examples."""

    name: str
    kind: str
    metric: str
    train: list[Example]
    eval: list[Example]


def resolve_task(task: str | TaskSpec) -> TaskSpec:
    """A shipped task's name as a :class:`TaskSpec` (shipped files), or the spec itself."""
    if isinstance(task, TaskSpec):
        return task
    key = task.strip().lower()
    if key in GENERATION_TEMPLATES:
        return TaskSpec(name=key, builtin=key, metric=GENERATION_METRICS[key])
    if key in CLOZE_TASKS:
        return TaskSpec(name=key, builtin=key)
    raise ValueError(f"unknown task {task!r}; shipped tasks: {', '.join(SHIPPED_TASKS)}; "
                     f"other templates: {', '.join(sorted(set(CLOZE_TASKS) - set(SHIPPED_TASKS)))}; "
                     "or describe your own data (kind, eval_file, template, ...)")


def _shipped(spec: TaskSpec, split: str) -> Path:
    files = {**TASK_FILES, **GENERATION_FILES}.get(spec.builtin or "", {})
    if split not in files:
        which = "train_file" if split == "train" else "eval_file"
        raise ValueError(f"task {spec.name!r} has no shipped {split} data; give {which}")
    return DATA_DIR / files[split]


def _row_examples(spec: TaskSpec, row: dict[str, Any]) -> list[Example]:
    if spec.builtin is None:
        return [custom_cloze(spec, row) if spec.kind == "classification" else custom_generation(spec, row)]
    if spec.builtin in GENERATION_TEMPLATES:
        return list(GENERATION_TEMPLATES[spec.builtin](row, spec.max_words))
    return list(cloze_builder(spec.builtin)(row))


def _read(spec: TaskSpec, path: Path, split: str) -> list[dict[str, Any]]:
    hf_split = spec.train_split if split == "train" else spec.eval_split
    return read_task_rows(spec.name, path, spec.format, hf_split, split)


def load_examples(task: str | TaskSpec, split: str, limit: int | None = None) -> list[Example]:
    """The first ``limit`` examples of ``split`` (``train`` or ``val``) of a task. Every row is
    checked; a file with no rows, an unreadable file or a bad row is refused naming the task, the file
    and the row."""
    spec = resolve_task(task)
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; valid splits: train, val")
    path = spec.train_file if split == "train" else spec.eval_file
    path = path if path is not None else _shipped(spec, split)
    examples: list[Example] = []
    for number, row in enumerate(_read(spec, path, split), start=1):
        try:
            if not isinstance(row, dict):
                raise TypeError(f"a row must be an object with fields, got {type(row).__name__}")
            examples.extend(replace(example, source=f"{path}: row {number}")
                            for example in _row_examples(spec, row))
        except (ValueError, TypeError, KeyError) as err:
            raise DataError(f"task {spec.name!r}: {path}: row {number}: {err}") from err
    return examples[:limit] if limit is not None else examples


Selection = Literal["sample", "first"]


def select_examples(examples: list[Example], limit: int | None, selection: Selection = "sample",
                    seed: int = 0) -> list[Example]:
    """``limit`` of ``examples`` (all of them when there are no more): ``first`` takes the first in file
    order; ``sample`` a seeded random choice, stratified by label for classification (each label keeps
    its share of the rows, by largest remainder), returned in file order."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if selection == "first":
        return examples[:limit]
    generator = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(getattr(example, "label", None), []).append(index)
    shares = {label: limit * len(indices) / len(examples) for label, indices in groups.items()}
    counts = {label: int(share) for label, share in shares.items()}
    remainders = sorted(groups, key=lambda label: (shares[label] - counts[label], -len(groups[label])),
                        reverse=True)
    for label in remainders[:limit - sum(counts.values())]:
        counts[label] += 1
    chosen = [index for label, indices in groups.items()
              for index in generator.sample(indices, counts[label])]
    return [examples[index] for index in sorted(chosen)]


def load_task_data(task: str | TaskSpec, train_limit: int | None, eval_limit: int | None,
                   need_train: bool = True, selection: Selection = "sample", seed: int = 0) -> TaskData:
    """Training and evaluation examples of a task (training only when ``need_train``), ``train_limit``
    and ``eval_limit`` of them chosen by ``select_examples``."""
    spec = resolve_task(task)
    train = select_examples(load_examples(spec, "train"), train_limit, selection, seed) if need_train else []
    evaluation = select_examples(load_examples(spec, "val"), eval_limit, selection, seed)
    if not evaluation:
        raise ValueError(f"task {spec.name!r} has no evaluation examples")
    return TaskData(spec.name, spec.kind, spec.metric or "accuracy", train, evaluation)
