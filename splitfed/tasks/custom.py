"""Tasks described in a config, not in code: a user's classification or generation data set.

Classification::

    name: reviews
    kind: classification
    train_file: data/train.csv          # JSONL, JSON, CSV, TSV, Parquet or a save_to_disk directory
    eval_file: data/test.csv
    template: "Review: {text}\\nSentiment:"
    label_field: label
    label_words: {pos: positive, neg: negative}     # label value -> answer word, options in order

Generation::

    name: tickets
    kind: generation
    eval_file: data/tickets.jsonl
    system: "Summarize the ticket."
    template: "{body}"
    target_field: summary
    metric: rouge                                   # or squad_f1

``builtin: boolq`` (or any other template: rte, cb, copa, wic, wsc, multirc, record, coqa, xsum)
reads the files with that task's template instead, e.g. to use a full data set on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from string import Formatter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from splitfed.tasks.chat import GENERATION_METRICS, GENERATION_TEMPLATES
from splitfed.tasks.example import ClozeExample, GenerationExample
from splitfed.tasks.files import FileFormat
from splitfed.tasks.loading import CLOZE_TASKS

TaskKind = Literal["classification", "generation"]


class TaskSpec(BaseModel):
    """A task read from files: a built-in template, or a template string with label words."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the task's name in tables")
    kind: TaskKind = Field("classification", description="classification (scored by the options' "
                                                         "likelihoods) or generation")
    builtin: str | None = Field(None, description="read rows with this shipped task's template")
    train_file: Path | None = Field(None, description="training rows (needed by trainers)")
    eval_file: Path | None = Field(None, description="held-out rows (default: the shipped ones of builtin)")
    format: FileFormat | None = Field(None, description="jsonl, json, csv, tsv, parquet or hf "
                                                        "(default: from the suffix)")
    train_split: str = Field("train", description="split of an hf DatasetDict used for training")
    eval_split: str = Field("validation", description="split of an hf DatasetDict used for evaluation")
    template: str | None = Field(None, description="prompt with {field} placeholders")
    system: str | None = Field(None, description="generation: the system message")
    label_field: str = Field("label", description="classification: the field holding the label")
    label_words: dict[str, str] = Field(default_factory=dict, description="label value -> answer text; "
                                        "values may be numbers or strings ({0: negative, 1: positive}), "
                                        "matched to the data's labels as text (1, 1.0 and '1' are the same "
                                        "label; true/false for booleans)")
    answer_prefix: str = Field(
        " ", description="classification: text put between the prompt and each label word, unless the word "
                         "starts with whitespace itself. One space by default: in running text a word "
                         "follows a space, and BPE and SentencePiece tokenizers give the spaced word its own "
                         "token (SmolLM2: ' positive' is token 2731, 'positive' 16185), the one the model "
                         "saw after prompts like 'Sentiment:'; '' joins the word to the prompt, a newline "
                         "puts it on a line of its own")
    target_field: str = Field("target", description="generation: the field holding the reference "
                                                    "answer (a list counts as several references)")
    metric: Literal["accuracy", "rouge", "squad_f1"] | None = Field(
        None, description="default: accuracy for classification, rouge for generation")
    max_words: int = Field(400, ge=1, description="built-in generation tasks: cut passages to this")

    @field_validator("label_words", mode="before")
    @classmethod
    def _label_words_as_text(cls, value: Any) -> Any:
        """Label values as the data's labels are matched: numbers and booleans as text, one each."""
        if not isinstance(value, Mapping):
            return value
        words: dict[str, str] = {}
        for key, word in value.items():
            label = label_text(key)
            if label in words:
                raise ValueError(f"label_words: {key!r} and another key are the same label {label!r}")
            if not isinstance(word, str | int | float) or isinstance(word, bool):
                raise ValueError(f"label_words: the answer for label {label!r} must be text, got {word!r}")
            words[label] = str(word)
        return words

    @model_validator(mode="after")
    def _complete(self) -> TaskSpec:
        if self.builtin is not None:
            self.builtin = self.builtin.strip().lower()
            if self.builtin in GENERATION_TEMPLATES:
                self.kind = "generation"
                self.metric = self.metric or GENERATION_METRICS[self.builtin]  # type: ignore[assignment]
            elif self.builtin in CLOZE_TASKS:
                self.kind = "classification"
            else:
                raise ValueError(f"unknown builtin {self.builtin!r}; valid: "
                                 f"{', '.join([*CLOZE_TASKS, *GENERATION_TEMPLATES])}")
        else:
            if not self.template:
                raise ValueError("give a template (with {field} placeholders) or a builtin task")
            if self.kind == "classification" and len(self.label_words) < 2:
                raise ValueError("a classification task needs label_words with at least two labels")
            fields = {name for _, name, _, _ in Formatter().parse(self.template) if name}
            if not fields:
                raise ValueError(f"template {self.template!r} has no {{field}} placeholder")
        if self.metric is None:
            self.metric = "accuracy" if self.kind == "classification" else "rouge"
        if (self.kind == "classification") != (self.metric == "accuracy"):
            raise ValueError(f"metric {self.metric} does not fit a {self.kind} task")
        return self


def as_text(value: Any) -> str:
    """A value of a row as text, as template fields are filled: booleans as true/false, whole floats as
    integers, whitespace stripped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def label_text(value: Any) -> str:
    """A label as label_words' keys and the data's labels are compared: as text, with numbers in one
    form (1, 1.0, "1" and "1.0" are the same label) and booleans in lower case ("True" is "true")."""
    text = as_text(value)
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def fill(template: str, row: Mapping[str, Any]) -> str:
    """``template`` with every ``{field}`` replaced by the row's value; names a missing field."""
    try:
        return template.format_map({key: as_text(value) for key, value in row.items()})
    except KeyError as err:
        raise ValueError(f"template field {err.args[0]!r} is not in the row (fields: "
                         f"{', '.join(map(str, row))})") from err


def _option(word: str, prefix: str = " ") -> str:
    return word if word[:1].isspace() else prefix + word


def custom_cloze(spec: TaskSpec, row: Mapping[str, Any]) -> ClozeExample:
    """One classification row: the filled template, the label words as options."""
    if spec.label_field not in row:
        raise ValueError(f"row has no label field {spec.label_field!r}")
    value = label_text(row[spec.label_field])
    keys = [label_text(k) for k in spec.label_words]
    if value not in keys:
        raise ValueError(f"label {value!r} (field {spec.label_field!r}) is not one of label_words: "
                         f"{', '.join(repr(k) for k in keys)}")
    options = [_option(word, spec.answer_prefix) for word in spec.label_words.values()]
    return ClozeExample(fill(spec.template or "", row), options, keys.index(value))


def custom_generation(spec: TaskSpec, row: Mapping[str, Any]) -> GenerationExample:
    """One generation row: the filled template as the user turn, the target field as the answer."""
    if spec.target_field not in row:
        raise ValueError(f"row has no target field {spec.target_field!r}")
    target = row[spec.target_field]
    references = tuple(as_text(t) for t in target) if isinstance(target, list) else (as_text(target),)
    return GenerationExample(fill(spec.template or "", row), references[0], spec.system, references)
