"""Cloze templates for SuperGLUE tasks (FedSEA-LLaMA Table 5, adapted to causal LMs).

Each builder takes one JSONL row in either the official SuperGLUE format or the
Hugging Face format and returns a :class:`ClozeExample`. The prompt ends right
before the answer slot ``[M]``; the text that follows ``[M]`` in the paper's
template is dropped, except where it carries the evidence the answer depends on
(RTE and CB put the premise after ``[M]``): a causal LM could not see it, so the
premise is moved in front of the question. The resulting forms::

    RTE    "{premise}" "{hypothesis}"?[ yes| no]
    CB     "{premise}" "{hypothesis}"?[ yes| no| maybe]
    BoolQ  {passage}. Question: {question}? Answer:[ yes| no]
    COPA   "{choice1}" or "{choice2}"? {premise}, so[ {choice1'}| {choice2'}]
    WiC    "{sentence1}" / "{sentence2}" Similar sense of {word}?[ yes| no]
    WSC    {text} The pronoun '*{span2}*' refers to {span1}?[ yes| no]

The paper's WSC cloze has the model produce the noun; a SuperGLUE WSC row pairs one pronoun with
one candidate noun and a true/false label, so the candidate is named in the prompt and the answer
is yes/no (true -> yes).

In BoolQ the ``.`` after the passage and the ``?`` after the question are only
added when not already there. In COPA the premise loses its final period,
``so`` becomes ``because`` when the question is ``cause``, and each option is its
choice with the final period removed and the first letter lower-cased (kept for
"I", "I'm", ... and for all-caps words such as "TV").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from splitfed.tasks.example import ClozeExample

Row = Mapping[str, Any]

YES_NO = [" yes", " no"]
YES_NO_MAYBE = [" yes", " no", " maybe"]
RTE_LABELS = ("entailment", "not_entailment")
CB_LABELS = ("entailment", "contradiction", "neutral")


def _field(row: Row, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise ValueError(f"row has no text field {key!r}: {dict(row)!r:.200}")
    return value.strip()


def _class_index(value: Any, names: tuple[str, ...]) -> int:
    """Map an official string label or an HF integer label to a class index."""
    if isinstance(value, str) and value.strip().lower() in names:
        return names.index(value.strip().lower())
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    raise ValueError(f"label {value!r} is not one of {names} or 0..{len(names) - 1}")


def _yes_no_index(value: Any) -> int:
    """Map a true/false label (bool, 0/1 or 'true'/'false') to 0 = yes, 1 = no."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return 0 if value.strip().lower() == "true" else 1
    if isinstance(value, int) and value in (0, 1):  # bool is an int: True == 1
        return 0 if value else 1
    raise ValueError(f"label {value!r} is not a boolean")


def _end_with(text: str, mark: str, also: str = ".!?") -> str:
    return text if text.endswith(tuple(also)) else text + mark


def _strip_period(text: str) -> str:
    return text.rstrip(" .")


def _lower_first(text: str) -> str:
    first = text.split(" ", 1)[0]
    if first == "I" or first.startswith("I'") or (len(first) > 1 and first[1].isupper()):
        return text
    return text[:1].lower() + text[1:]


def _quoted_pair(first: str, second: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """``"{first}" "{second}"?`` and the character spans of the two texts in it."""
    start = len(first) + 4
    return f'"{first}" "{second}"?', ((1, 1 + len(first)), (start, start + len(second)))


def rte_example(row: Row) -> ClozeExample:
    """RTE: entailment -> " yes", not_entailment -> " no"."""
    prompt, spans = _quoted_pair(_field(row, "premise"), _field(row, "hypothesis"))
    return ClozeExample(prompt, list(YES_NO), _class_index(row.get("label"), RTE_LABELS), spans)


def cb_example(row: Row) -> ClozeExample:
    """CB: entailment -> " yes", contradiction -> " no", neutral -> " maybe"."""
    prompt, spans = _quoted_pair(_field(row, "premise"), _field(row, "hypothesis"))
    return ClozeExample(prompt, list(YES_NO_MAYBE), _class_index(row.get("label"), CB_LABELS), spans)


def boolq_example(row: Row) -> ClozeExample:
    """BoolQ: true -> " yes", false -> " no" (official ``label`` or HF ``answer``)."""
    passage = _end_with(_field(row, "passage"), ".")
    question = _end_with(_field(row, "question"), "?", also="?")
    value = row["label"] if "label" in row else row.get("answer")
    return ClozeExample(f"{passage} Question: {question} Answer:", list(YES_NO), _yes_no_index(value))


def copa_example(row: Row) -> ClozeExample:
    """COPA: the options are the two choices; label 0/1 picks choice1/choice2."""
    question = row.get("question")
    if question not in ("cause", "effect"):
        raise ValueError(f"COPA question must be 'cause' or 'effect', got {question!r}")
    c1, c2 = _field(row, "choice1"), _field(row, "choice2")
    joint = "because" if question == "cause" else "so"
    prompt = f'"{c1}" or "{c2}"? {_strip_period(_field(row, "premise"))}, {joint}'
    options = [" " + _lower_first(_strip_period(c)) for c in (c1, c2)]
    return ClozeExample(prompt, options, _class_index(row.get("label"), ("choice1", "choice2")))


def wic_example(row: Row) -> ClozeExample:
    """WiC: true (same sense) -> " yes", false -> " no" (official true/false or HF 1/0)."""
    prompt = (f'"{_field(row, "sentence1")}" / "{_field(row, "sentence2")}" '
              f'Similar sense of {_field(row, "word")}?')
    return ClozeExample(prompt, list(YES_NO), _yes_no_index(row.get("label")))


def wsc_example(row: Row) -> ClozeExample:
    """WSC: does the pronoun (span2) refer to the noun (span1)? true -> " yes"; nested ``target``
    (official) or flat ``span1_text``/``span2_text`` (HF)."""
    spans = row.get("target") if isinstance(row.get("target"), dict) else row
    noun, pronoun = _field(spans, "span1_text"), _field(spans, "span2_text")
    prompt = f"{_field(row, 'text')} The pronoun '*{pronoun}*' refers to {noun}?"
    return ClozeExample(prompt, list(YES_NO), _yes_no_index(row.get("label")))


TEMPLATES: dict[str, Callable[[Row], ClozeExample]] = {
    "rte": rte_example,
    "cb": cb_example,
    "copa": copa_example,
    "boolq": boolq_example,
    "wic": wic_example,
    "wsc": wsc_example,
}
