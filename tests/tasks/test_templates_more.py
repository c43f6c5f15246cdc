"""WiC, WSC, MultiRC and ReCoRD cloze templates on hand-checked rows (official and HF formats)."""

from __future__ import annotations

import pytest

from splitfed.tasks import (
    ClozeExample,
    cloze_builder,
    load_task,
    multirc_examples,
    record_examples,
    wic_example,
    wsc_example,
)

WIC = {"word": "class", "sentence1": "An emerging professional class.",
       "sentence2": "Apologizing for losing your temper showed real class."}
WIC_PROMPT = ('"An emerging professional class." / "Apologizing for losing your temper showed real class." '
              "Similar sense of class?")


@pytest.mark.parametrize(("label", "expected"), [(False, 1), (True, 0), (0, 1), (1, 0), ("true", 0)])
def test_wic_both_formats(label: object, expected: int) -> None:
    assert wic_example({**WIC, "label": label}) == ClozeExample(WIC_PROMPT, [" yes", " no"], expected)


WSC_TEXT = "Mark told Pete many lies about himself. He should have been more skeptical."
WSC_PROMPT = WSC_TEXT + " The pronoun '*He*' refers to Mark?"


def test_wsc_official_nested_target() -> None:
    row = {"text": WSC_TEXT, "target": {"span1_text": "Mark", "span2_text": "He", "span1_index": 0,
                                        "span2_index": 8}, "label": True}
    assert wsc_example(row) == ClozeExample(WSC_PROMPT, [" yes", " no"], 0)


def test_wsc_hf_flat_fields() -> None:
    row = {"text": WSC_TEXT, "span1_text": "Mark", "span2_text": "He", "span1_index": 0, "span2_index": 8,
           "label": 0}  # HF: 0 = False
    assert wsc_example(row) == ClozeExample(WSC_PROMPT, [" yes", " no"], 1)


def test_wsc_missing_span_is_an_error() -> None:
    with pytest.raises(ValueError, match="span2_text"):
        wsc_example({"text": WSC_TEXT, "span1_text": "Mark", "label": 1})


MULTIRC_OFFICIAL = {
    "idx": 0,
    "passage": {
        "text": "Forces cause changes in motion",
        "questions": [
            {"question": "What changes motion", "idx": 0,
             "answers": [{"text": "A force.", "idx": 0, "label": 1},
                         {"text": "Nothing", "idx": 1, "label": 0}]},
            {"question": "Is mass relevant?", "idx": 1, "answers": [{"text": "Yes", "idx": 2, "label": 1}]},
        ],
    },
}


def test_multirc_official_row_gives_one_item_per_answer() -> None:
    examples = multirc_examples(MULTIRC_OFFICIAL)
    base = "Forces cause changes in motion. Question: "
    assert [e.prompt for e in examples] == [
        base + "What changes motion? Is it A force?",
        base + "What changes motion? Is it Nothing?",
        base + "Is mass relevant? Is it Yes?",
    ]
    assert [e.label for e in examples] == [0, 1, 0]
    assert all(e.options == [" yes", " no"] for e in examples)


def test_multirc_hf_flat_row() -> None:
    row = {"paragraph": "Forces cause changes in motion.", "question": "What changes motion?",
           "answer": "Nothing", "label": 0, "idx": {"paragraph": 0, "question": 0, "answer": 1}}
    assert multirc_examples(row) == [ClozeExample(
        "Forces cause changes in motion. Question: What changes motion? Is it Nothing?", [" yes", " no"], 1)]


PASSAGE = "Ada Lovelace met Charles Babbage in London.\n@highlight\nThey worked on the engine"


def test_record_official_spans() -> None:
    # entity spans are inclusive character offsets into passage.text
    row = {"passage": {"text": PASSAGE, "entities": [{"start": 0, "end": 11}, {"start": 17, "end": 31},
                                                     {"start": 36, "end": 41}, {"start": 0, "end": 11}]},
           "qas": [{"query": "@placeholder designed the Analytical Engine.", "idx": 0,
                    "answers": [{"start": 17, "end": 31, "text": "Charles Babbage"}]},
                   {"query": "The two met in @placeholder in 1833.", "idx": 1,
                    "answers": [{"start": 36, "end": 41, "text": "London"}]}]}
    first, second = record_examples(row)
    cleaned = "Ada Lovelace met Charles Babbage in London. They worked on the engine."
    assert first == ClozeExample(cleaned + "\n", [" Ada Lovelace", " Charles Babbage", " London"], 1)
    assert second == ClozeExample(cleaned + "\nThe two met in", [" Ada Lovelace", " Charles Babbage",
                                                                 " London"], 2)


def test_record_hf_row_and_missing_answer() -> None:
    row = {"passage": "Paris is in France.", "query": "@placeholder is a country.",
           "entities": ["Paris", "France"], "answers": ["France"]}
    assert record_examples(row) == [ClozeExample("Paris is in France.\n", [" Paris", " France"], 1)]
    with pytest.raises(ValueError, match="no ReCoRD entity is an answer"):
        record_examples({**row, "answers": ["Spain"]})
    with pytest.raises(ValueError, match="@placeholder"):
        record_examples({**row, "query": "no slot"})


def test_builders_for_every_cloze_task() -> None:
    assert cloze_builder("WiC")({**WIC, "label": True})[0].label == 0
    assert len(cloze_builder("multirc")(MULTIRC_OFFICIAL)) == 3
    with pytest.raises(ValueError, match="valid tasks"):
        cloze_builder("squad")


def test_shipped_rows_render_as_expected() -> None:
    wic = load_task("wic", "val", limit=1)[0]
    assert wic.prompt.endswith("showed real class.\" Similar sense of class?") and wic.answer == " no"
    wsc = load_task("wsc", "val", limit=2)[1]
    assert wsc.prompt.endswith("The pronoun '*his*' refers to Mr. Moncrieff?") and wsc.answer == " yes"
    multirc = load_task("multirc", "val", limit=2)
    assert multirc[0].prompt.endswith("Question: Would the mass of a baseball affect how much force you "
                                      "have to use to pick it up? Is it No?")
    assert [e.answer for e in multirc] == [" no", " yes"]
