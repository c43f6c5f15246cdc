"""Passage-level SuperGLUE tasks, where one official row holds many cloze items: MultiRC, ReCoRD.

Builders take one row and return a list of :class:`ClozeExample`::

    MultiRC  {passage}. Question: {question}? Is it {answer}?[ yes| no]
    ReCoRD   {passage}\\n{query up to @placeholder}[ {entity 1}| {entity 2}| ...]

MultiRC: the official row nests ``passage.questions[].answers[]`` (one item per answer option);
the HF row is flat (``paragraph``, ``question``, ``answer``, ``label``). Label 1 / true -> " yes".
ReCoRD: the official row gives entity spans (``start``, ``end`` inclusive) into ``passage.text`` and
``qas[].answers``; the HF row gives ``passage``, ``query``, ``entities`` and ``answers`` as strings.
The options are the distinct entities; the label is the first one that is an answer. The query's
text after ``@placeholder`` is dropped (a causal LM could not condition on it). ``@highlight``
lines become sentences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from splitfed.tasks.example import ClozeExample
from splitfed.tasks.templates import YES_NO, _end_with, _field, _yes_no_index

Row = Mapping[str, Any]


def _multirc_item(passage: str, question: str, answer: str, label: Any) -> ClozeExample:
    prompt = (f"{_end_with(passage.strip(), '.')} Question: {_end_with(question.strip(), '?', also='?')} "
              f"Is it {answer.strip().rstrip('.?!')}?")
    return ClozeExample(prompt, list(YES_NO), _yes_no_index(label))


def multirc_examples(row: Row) -> list[ClozeExample]:
    """One yes/no item per answer option of every question of the passage."""
    if isinstance(row.get("passage"), Mapping):
        passage = _field(row["passage"], "text")
        return [
            _multirc_item(passage, q["question"], a["text"], a.get("label"))
            for q in row["passage"].get("questions", [])
            for a in q.get("answers", [])
        ]
    return [_multirc_item(_field(row, "paragraph"), _field(row, "question"), _field(row, "answer"),
                          row.get("label"))]


def _clean_passage(text: str) -> str:
    lines = [line.strip() for line in text.split("\n") if line.strip() and line.strip() != "@highlight"]
    return " ".join(_end_with(line, ".") for line in lines)


def _record_item(passage: str, query: str, entities: list[str], answers: list[str]) -> ClozeExample:
    if "@placeholder" not in query:
        raise ValueError(f"ReCoRD query has no @placeholder: {query!r:.120}")
    options = list(dict.fromkeys(e.strip() for e in entities if e.strip()))
    wanted = {a.strip() for a in answers}
    label = next((i for i, e in enumerate(options) if e in wanted), None)
    if label is None:
        raise ValueError(f"no ReCoRD entity is an answer: answers {sorted(wanted)!r:.120}")
    prompt = f"{_clean_passage(passage)}\n{query.split('@placeholder', 1)[0].rstrip()}"
    return ClozeExample(prompt, [" " + e for e in options], label)


def record_examples(row: Row) -> list[ClozeExample]:
    """One item per query, choosing among the passage's entities."""
    if isinstance(row.get("passage"), Mapping):
        text = row["passage"]["text"]
        entities = [text[e["start"] : e["end"] + 1] for e in row["passage"].get("entities", [])]
        return [
            _record_item(text, qa["query"], entities, [a["text"] for a in qa.get("answers", [])])
            for qa in row.get("qas", [])
        ]
    return [_record_item(_field(row, "passage"), _field(row, "query"), list(row.get("entities", [])),
                         list(row.get("answers", [])))]


PASSAGE_TEMPLATES: dict[str, Callable[[Row], list[ClozeExample]]] = {
    "multirc": multirc_examples,
    "record": record_examples,
}
