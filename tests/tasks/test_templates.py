"""Every template on hand-checked rows, in official SuperGLUE and Hugging Face format."""

from __future__ import annotations

import pytest

from splitfed.tasks import (
    TEMPLATES,
    ClozeExample,
    boolq_example,
    cb_example,
    copa_example,
    rte_example,
)

RTE_PREMISE = (
    "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at "
    "age 44, according to the Christopher Reeve Foundation."
)
RTE_PROMPT = (
    '"Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at '
    'age 44, according to the Christopher Reeve Foundation." '
    '"Christopher Reeve had an accident."?'
)


@pytest.mark.parametrize(
    ("label", "expected"),
    [("not_entailment", 1), ("entailment", 0), (1, 1), (0, 0)],
)
def test_rte_both_formats(label: object, expected: int) -> None:
    row = {
        "premise": RTE_PREMISE,
        "hypothesis": "Christopher Reeve had an accident.",
        "label": label,
        "idx": 0,
    }
    ex = rte_example(row)
    assert ex == ClozeExample(RTE_PROMPT, [" yes", " no"], expected)
    assert ex.answer == (" yes" if expected == 0 else " no")


CB_PREMISE = "``Who knows? The point is, do we go with it or not?'' Do we assume there is a shipment?"
CB_PROMPT = (
    "\"``Who knows? The point is, do we go with it or not?'' Do we assume there is a "
    'shipment?" "there is a shipment"?'
)


@pytest.mark.parametrize(
    ("label", "expected", "answer"),
    [
        ("entailment", 0, " yes"),
        ("contradiction", 1, " no"),
        ("neutral", 2, " maybe"),
        (0, 0, " yes"),  # HF: 0 = entailment
        (1, 1, " no"),  # HF: 1 = contradiction
        (2, 2, " maybe"),  # HF: 2 = neutral
    ],
)
def test_cb_both_formats(label: object, expected: int, answer: str) -> None:
    ex = cb_example({"premise": CB_PREMISE, "hypothesis": "there is a shipment", "label": label})
    assert ex.prompt == CB_PROMPT
    assert ex.options == [" yes", " no", " maybe"]
    assert ex.label == expected
    assert ex.answer == answer


def test_copa_effect() -> None:
    row = {
        "premise": "The man turned on the faucet.",
        "choice1": "The toilet filled with water.",
        "choice2": "Water flowed from the spout.",
        "question": "effect",
        "label": 1,
        "idx": 0,
    }
    ex = copa_example(row)
    assert ex.prompt == (
        '"The toilet filled with water." or "Water flowed from the spout."? The man turned on the faucet, so'
    )
    assert ex.options == [" the toilet filled with water", " water flowed from the spout"]
    assert ex.label == 1


def test_copa_cause_uses_because_and_keeps_pronoun_i() -> None:
    row = {
        "premise": "I ironed my shirt. ",
        "choice1": "I had a date.",
        "choice2": "It was wrinkled.",
        "question": "cause",
        "label": 0,
    }
    ex = copa_example(row)
    assert ex.prompt == '"I had a date." or "It was wrinkled."? I ironed my shirt, because'
    assert ex.options == [" I had a date", " it was wrinkled"]
    assert ex.label == 0


def test_copa_keeps_acronyms() -> None:
    row = {"premise": "He sat down.", "choice1": "TV was on.", "choice2": "He ate."}
    ex = copa_example({**row, "question": "effect", "label": 0})
    assert ex.options == [" TV was on", " he ate"]


BOOLQ_PROMPT = (
    "Persian -- Persian is spoken in Iran and Afghanistan. Question: do iran and "
    "afghanistan speak the same language? Answer:"
)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"label": True, "idx": 3}, 0),  # official
        ({"label": False, "idx": 3}, 1),
        ({"answer": True}, 0),  # HF boolq
        ({"answer": False}, 1),
        ({"label": 1}, 0),  # HF super_glue/boolq: 1 = True
        ({"label": 0}, 1),
        ({"label": "false"}, 1),
    ],
)
def test_boolq_both_formats(extra: dict, expected: int) -> None:
    row = {
        "question": "do iran and afghanistan speak the same language",
        "passage": "Persian -- Persian is spoken in Iran and Afghanistan.",
        **extra,
    }
    ex = boolq_example(row)
    assert ex == ClozeExample(BOOLQ_PROMPT, [" yes", " no"], expected)


def test_boolq_adds_missing_period_but_never_doubles_question_mark() -> None:
    ex = boolq_example({"passage": "Sky -- It is blue", "question": "is the sky blue?", "answer": True})
    assert ex.prompt == "Sky -- It is blue. Question: is the sky blue? Answer:"


@pytest.mark.parametrize(
    ("task", "row"),
    [
        ("rte", {"premise": "a", "hypothesis": "b", "label": "neutral"}),
        ("rte", {"premise": "a", "hypothesis": "b", "label": True}),
        ("rte", {"premise": "a", "hypothesis": "b", "label": -1}),  # unlabelled test row
        ("cb", {"premise": "a", "hypothesis": "b", "label": 3}),
        ("cb", {"premise": "a", "hypothesis": "b"}),
        ("boolq", {"passage": "a", "question": "b"}),
        ("boolq", {"passage": "a", "question": "b", "label": 2}),
        ("copa", {"premise": "a", "choice1": "b", "choice2": "c", "question": "why", "label": 0}),
        ("copa", {"premise": "a", "choice1": "b", "question": "cause", "label": 0}),
    ],
)
def test_bad_rows_raise(task: str, row: dict) -> None:
    with pytest.raises(ValueError):
        TEMPLATES[task](row)


def test_cloze_example_validates_label() -> None:
    with pytest.raises(ValueError):
        ClozeExample("p", [" yes", " no"], 2)
    with pytest.raises(TypeError):
        ClozeExample("p", [" yes", " no"], True)


@pytest.mark.parametrize("builder", [rte_example, cb_example])
def test_the_private_spans_are_exactly_the_rows_own_texts(builder) -> None:
    row = {"premise": "  The cat sat.  ", "hypothesis": "A cat sat?", "label": 0}
    example = builder(row)
    assert [example.prompt[a:b] for a, b in example.private_spans] == ["The cat sat.", "A cat sat?"]
