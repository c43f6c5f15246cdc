"""Classification metrics for cloze tasks (no sklearn dependency)."""

from __future__ import annotations

from collections.abc import Sequence


def _check(preds: Sequence[int], labels: Sequence[int]) -> None:
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no examples")


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to their label."""
    _check(preds, labels)
    return sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels)


def macro_f1(preds: Sequence[int], labels: Sequence[int], num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1.

    Classes are ``range(num_classes)`` if given, else every class seen in ``preds`` or
    ``labels`` (as sklearn's ``f1_score(average="macro")``). A class with no true or
    predicted example scores 0.
    """
    _check(preds, labels)
    classes = range(num_classes) if num_classes is not None else sorted({*preds, *labels})
    f1s = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in zip(preds, labels, strict=True))
        fp = sum(p == c and y != c for p, y in zip(preds, labels, strict=True))
        fn = sum(p != c and y == c for p, y in zip(preds, labels, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)
