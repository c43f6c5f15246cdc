"""Rows from JSONL, JSON, CSV, TSV, Parquet and Hugging Face datasets saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitfed.tasks import read_rows
from splitfed.tasks.files import detect_format

ROWS = [{"text": "good film", "label": "pos"}, {"text": "dull, long", "label": "neg"}]


def test_jsonl_json_csv_tsv(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"version": 1, "data": ROWS}))
    (tmp_path / "a.csv").write_text('text,label\ngood film,pos\n"dull, long",neg\n')
    (tmp_path / "a.tsv").write_text("text\tlabel\ngood film\tpos\ndull, long\tneg\n")
    for name in ("a.jsonl", "a.json", "b.json", "a.csv", "a.tsv"):
        assert read_rows(tmp_path / name) == ROWS, name


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    assert read_rows(tmp_path / "a.parquet") == ROWS


def test_hf_dataset_and_dataset_dict_on_disk(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert read_rows(tmp_path / "one") == ROWS
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                               "validation": datasets.Dataset.from_list(ROWS[1:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert read_rows(tmp_path / "dd", split="validation") == ROWS[1:]
    with pytest.raises(ValueError, match="train, validation"):
        read_rows(tmp_path / "dd")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="jsonl, json, csv, tsv, parquet, hf"):
        detect_format(tmp_path / "a.txt")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_rows(tmp_path / "bad.jsonl")
    (tmp_path / "c.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="'data' list"):
        read_rows(tmp_path / "c.json")
