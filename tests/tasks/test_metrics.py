"""Metrics on hand-computed cases."""

from __future__ import annotations

import pytest

from splitfed.tasks import accuracy, macro_f1, predict

PREDS = [0, 0, 1, 1, 2]
LABELS = [0, 1, 1, 1, 0]


def test_accuracy() -> None:
    assert accuracy(PREDS, LABELS) == pytest.approx(3 / 5)
    assert accuracy([1, 1], [1, 1]) == 1.0
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_macro_f1_hand_computed() -> None:
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 0, fn 1 -> 0.8; class 2: tp 0 -> 0
    assert macro_f1(PREDS, LABELS) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # an extra class with no example and no prediction counts as 0 when asked for
    assert macro_f1(PREDS, LABELS, num_classes=4) == pytest.approx(1.3 / 4)


def test_macro_f1_binary_and_perfect() -> None:
    # class 0: tp 2, fp 1, fn 0 -> 0.8; class 1: tp 0 -> 0
    assert macro_f1([0, 0, 0], [0, 0, 1]) == pytest.approx(0.4)
    assert macro_f1([0, 1, 2], [0, 1, 2]) == 1.0


def test_predict_argmax_first_on_ties() -> None:
    assert predict([[-1.0, -2.0], [-3.0, -0.5, -0.7], [-1.0, -1.0]]) == [0, 1, 0]
