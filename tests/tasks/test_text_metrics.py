"""SQuAD-style F1 / exact match and ROUGE on hand-checked examples."""

from __future__ import annotations

import pytest

from splitfed.tasks import exact_match, normalize_answer, rouge, squad_f1, token_f1
from splitfed.tasks.generation_eval import score_generation


def test_normalize_answer_like_the_squad_script() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theory") == "theory"  # articles only as whole words


def test_token_f1_hand_checked() -> None:
    # pred {white, kitten}, ref {little, white, kitten, named, cotton}: 2 common -> P 1, R 0.4
    assert token_f1("a white kitten", "a little white kitten named Cotton") == pytest.approx(2 * 0.4 / 1.4)
    assert token_f1("white", "White.") == 1.0
    assert token_f1("black", "white") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "white") == 0.0  # "the" normalizes to empty
    # repeated tokens count as a multiset: pred {a, a} (no articles here: "x x") vs ref {x}
    assert token_f1("x x", "x") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_squad_f1_takes_the_best_reference_and_averages() -> None:
    preds = ["white", "in a barn"]
    refs = [("white kitten", "white"), ("near a farm house",)]
    # 1.0 for the first; "in barn" vs "near farm house": no common token -> 0
    assert squad_f1(preds, refs) == pytest.approx(0.5)
    assert exact_match(preds, refs) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        squad_f1(preds, refs[:1])
    with pytest.raises(ValueError, match="at least one reference"):
        squad_f1(["x"], [()])


def test_rouge_hand_checked() -> None:
    # pred 3 tokens, ref 6 tokens, all pred unigrams in P=1, R=0.5 -> 2/3;
    # bigrams: pred 2, ref 5, 2 common -> P 1, R 0.4 -> 0.571; LCS 3 -> as R-1.
    scores = rouge(["the cat sat"], [("the cat sat on the mat",)])
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(2 * 0.4 / 1.4)
    assert scores["rougeL"] == pytest.approx(2 / 3)
    # order matters for L and 2 but not for 1
    swapped = rouge(["sat cat the"], [("the cat sat",)])
    assert swapped["rouge1"] == pytest.approx(1.0) and swapped["rouge2"] == 0.0
    assert swapped["rougeL"] == pytest.approx(1 / 3)
    # stemming: "running" and "runs" both stem to "run"
    assert rouge(["dogs running"], [("dog runs",)])["rouge1"] == pytest.approx(1.0)


def test_rouge_best_reference_and_mean() -> None:
    scores = rouge(["a b", "c d"], [("x y", "a b"), ("c z",)])
    assert scores["rouge1"] == pytest.approx((1.0 + 0.5) / 2)


def test_score_generation_dispatch() -> None:
    assert set(score_generation("rouge", ["a"], [("a",)])) == {"rouge1", "rouge2", "rougeL"}
    assert score_generation("squad_f1", ["x b"], [("b",)]) == {"f1": pytest.approx(2 / 3), "exact_match": 0.0}
    with pytest.raises(ValueError, match="rouge, squad_f1"):
        score_generation("bleu", ["a"], [("a",)])
