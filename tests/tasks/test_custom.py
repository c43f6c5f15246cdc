"""Tasks described in a config: templates, label words, files, built-in templates and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from splitfed.config import build_settings
from splitfed.evaluation import EvalSettings
from splitfed.tasks import ClozeExample, GenerationExample, TaskSpec, fill, load_examples, load_task_data

REPO = Path(__file__).resolve().parents[2]
SPEC = {"name": "reviews", "kind": "classification", "template": "Review: {text}\nSentiment:",
        "label_words": {"pos": "positive", "neg": " negative"}}


def test_classification_rows_from_csv(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("text,label\nGreat fun.,pos\nBoring.,neg\n")
    spec = TaskSpec(**SPEC, eval_file=tmp_path / "r.csv")
    assert load_examples(spec, "val") == [
        ClozeExample("Review: Great fun.\nSentiment:", [" positive", " negative"], 0),
        ClozeExample("Review: Boring.\nSentiment:", [" positive", " negative"], 1),
    ]


def test_label_values_of_any_type(tmp_path: Path) -> None:
    rows = [{"t": "a", "y": True}, {"t": "b", "y": 0}, {"t": "c", "y": 1.0}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = TaskSpec(name="x", template="{t}?", label_field="y", eval_file=tmp_path / "r.jsonl",
                    label_words={"true": "yes", "0": "zero", "1": "one"})
    assert [e.label for e in load_examples(spec, "val")] == [0, 1, 2]


def test_generation_rows(tmp_path: Path) -> None:
    rows = [{"body": "Printer on fire", "summary": "Fire"}, {"body": "Lost key", "summary": ["Key", "A key"]}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = TaskSpec(name="t", kind="generation", template="Ticket: {body}", system="Summarize.",
                    target_field="summary", eval_file=tmp_path / "t.jsonl")
    assert spec.metric == "rouge"
    assert load_examples(spec, "val") == [
        GenerationExample("Ticket: Printer on fire", "Fire", "Summarize.", ("Fire",)),
        GenerationExample("Ticket: Lost key", "Key", "Summarize.", ("Key", "A key")),
    ]


def test_builtin_template_over_a_parquet_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "is it wet", "passage": "Water is wet", "answer": True}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "boolq.parquet")
    data = load_task_data(TaskSpec(name="boolq-mine", builtin="BoolQ", train_file=tmp_path / "boolq.parquet"),
                          None, 5)
    assert data.kind == "classification" and len(data.eval) == 5  # eval: the shipped BoolQ val
    assert data.train == [ClozeExample("Water is wet. Question: is it wet? Answer:", [" yes", " no"], 0)]
    assert TaskSpec(name="x", builtin="xsum").kind == "generation"


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="template"):
        TaskSpec(name="x")
    with pytest.raises(ValidationError, match="at least two labels"):
        TaskSpec(name="x", template="{t}", label_words={"a": "b"})
    with pytest.raises(ValidationError, match="no {field} placeholder"):
        TaskSpec(name="x", template="plain", label_words={"a": "b", "c": "d"})
    with pytest.raises(ValidationError, match="does not fit"):
        TaskSpec(name="x", kind="generation", template="{t}", metric="accuracy")
    with pytest.raises(ValidationError, match="unknown builtin"):
        TaskSpec(name="x", builtin="squad")
    with pytest.raises(ValueError, match="'body' is not in the row"):
        fill("{body}", {"text": "x"})
    (tmp_path / "r.csv").write_text("text,label\nok,maybe\n")
    unknown = r"task 'reviews': .*r\.csv: row 1: label 'maybe' \(field 'label'\) is not one of label_words: "
    with pytest.raises(ValueError, match=unknown + r"'pos', 'neg'"):
        load_examples(TaskSpec(**SPEC, eval_file=tmp_path / "r.csv"), "val")
    with pytest.raises(ValueError, match="no shipped train data; give train_file"):
        load_examples("coqa", "train")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_examples("nope", "val")


def test_example_config_loads_and_its_files_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    settings = build_settings(EvalSettings, REPO / "examples" / "eval_own_data.yaml")
    reviews, xsum, boolq = settings.tasks
    assert isinstance(reviews, TaskSpec) and reviews.label_words == {"pos": "positive", "neg": "negative"}
    data = load_task_data(reviews, None, None)
    assert (len(data.train), len(data.eval)) == (8, 4)
    assert data.eval[0] == ClozeExample("Review: Beautifully shot and moving.\nSentiment:",
                                        [" positive", " negative"], 0)
    assert isinstance(xsum, TaskSpec) and load_examples(xsum, "val", 1)[0].user.startswith("The owners said")
    assert isinstance(boolq, TaskSpec) and boolq.builtin == "boolq"
    shipped = build_settings(EvalSettings, REPO / "examples" / "eval.yaml")
    assert shipped.tasks == ["cb", "copa", "xsum"] and shipped.steps % (shipped.rounds * shipped.clients) == 0


def test_numeric_label_words_match_labels_of_any_spelling(tmp_path: Path) -> None:
    """{0: negative, 1: positive} from YAML: integer keys, and labels 0, 1, "1", 1.0, "1.0" alike."""
    (tmp_path / "r.csv").write_text("text,label\na,0\nb,1\nc,1.0\n")
    rows = [{"text": "d", "label": 1}, {"text": "e", "label": 0.0}, {"text": "f", "label": "True"}]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = TaskSpec(name="sst2", template="{text}", label_words={0: "negative", 1: "positive"},
                    eval_file=tmp_path / "r.csv")
    assert spec.label_words == {"0": "negative", "1": "positive"}
    assert [e.label for e in load_examples(spec, "val")] == [0, 1, 1]
    jsonl = spec.model_copy(update={"eval_file": tmp_path / "r.jsonl"})
    with pytest.raises(ValueError, match=r"r\.jsonl: row 3: label 'true' .* label_words: '0', '1'"):
        load_examples(jsonl, "val")
    from_yaml = build_settings(EvalSettings, None, {"tasks": [{"name": "sst2", "template": "{text}",
                                                                "label_words": {0: "no", 1: "yes"},
                                                                "eval_file": str(tmp_path / "r.csv")}]})
    assert from_yaml.tasks[0].label_words == {"0": "no", "1": "yes"}
    with pytest.raises(ValidationError, match="same label '1'"):
        TaskSpec(name="x", template="{t}", label_words={1: "one", "1.0": "uno"})


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "holds no val rows"),
    (b"text,label\n", r"holds no val rows \(a header line and no rows\)"),
    (b"text,label\ncaf\xe9,pos\n", r"not UTF-8 text .* save the file as UTF-8"),
    (b"words,label\nfine,pos\n", r"row 1: template field 'text' is not in the row"),
    (b"text,verdict\nfine,pos\n", r"row 1: row has no label field 'label'"),
])
def test_every_bad_data_file_names_the_task_the_file_and_the_row(tmp_path: Path, content, reason) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"task 'reviews': {path}.*{reason}"):
        load_examples(TaskSpec(**SPEC, eval_file=path), "val")


def test_a_json_file_of_non_objects_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": "a", "label": "pos"}, ["text", "neg"]]))
    with pytest.raises(ValueError, match=rf"task 'reviews': {path}: row 2: a row must be an object"):
        load_examples(TaskSpec(**SPEC, eval_file=path), "val")


def test_a_limit_takes_a_seeded_sample_stratified_by_label_or_the_first_rows(tmp_path: Path) -> None:
    rows = [{"text": f"r{i}", "label": "pos" if i % 4 == 0 else "neg"} for i in range(40)]  # 10 pos, 30 neg
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = TaskSpec(**SPEC, train_file=tmp_path / "r.jsonl", eval_file=tmp_path / "r.jsonl")
    data = load_task_data(spec, 8, 40, selection="sample", seed=3)
    labels = [e.label for e in data.train]
    assert (labels.count(0), labels.count(1)) == (2, 6)  # the file's 1:3 share of the labels
    prompts = [e.prompt for e in data.train]
    assert prompts == sorted(prompts, key=lambda p: int(p.split()[1][1:]))  # kept in file order
    assert prompts != [f"Review: r{i}\nSentiment:" for i in range(8)]
    again = load_task_data(spec, 8, 40, selection="sample", seed=3)
    other = load_task_data(spec, 8, 40, selection="sample", seed=4)
    assert again.train == data.train and other.train != data.train
    first = load_task_data(spec, 8, 40, selection="first")
    assert [e.prompt for e in first.train] == [f"Review: r{i}\nSentiment:" for i in range(8)]
    assert len(data.eval) == 40  # a limit above the rows keeps them all


def test_the_own_data_example_of_the_docs_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """docs/own-data.md's run: the example config over a CSV with 0/1 answers and a TSV of articles,
    here on the tiny model with a small budget."""
    from splitfed.evaluation import run_eval

    monkeypatch.chdir(REPO)
    settings = build_settings(EvalSettings, REPO / "examples" / "own_data.yaml", {
        "model": "tiny-llama", "steps": 4, "train_examples": 8, "eval_examples": 4, "max_new_tokens": 4,
        "output": str(tmp_path)})
    boolq, xsum = settings.tasks
    assert boolq.label_words == {"0": "no", "1": "yes"} and xsum.kind == "generation"
    result = run_eval(settings)
    assert [(r.task, r.method) for r in result.results if r.skipped is None] == [
        (task, method) for task in ("boolq-csv", "xsum-tsv") for method in ("zero-shot", "centralized",
                                                                           "federated-iid")]
    assert result.tasks["boolq-csv"]["eval"] == 4 and result.get("boolq-csv", "centralized").losses
    assert "rougeL" in result.get("xsum-tsv", "federated-iid").metrics
