"""The wire codecs benchmark end to end on the tiny model: a row per codec, the bytes it promises, the
JSON, the table and the plot."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_benchmark, run_benchmark


def test_wire_codecs_benchmark_reports_each_row(tmp_path):
    command = ["--model", "tiny-llama",
               "--rows", "float32", "int8-blockwise/bfloat16", "int8-blockwise+ef", "--seeds", "0",
               "--steps", "3", "--batch-size", "4", "--train-examples", "8", "--eval-examples", "4",
               "--head", "1", "--tail", "1", "--output", str(tmp_path)]
    finished = run_benchmark("wire_codecs", *command)
    assert finished.returncode == 0, finished.stderr[-3000:]
    stem = tmp_path / "wire_codecs_tiny-llama_cb"
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0 and "| int8-blockwise+ef |" in stem.with_suffix(
        ".md").read_text()
    rows = {entry["row"]: entry for entry in payload["summary"]}
    assert list(rows) == ["float32", "int8-blockwise/bfloat16", "int8-blockwise+ef"]
    hidden = payload["hidden_size"]
    assert rows["float32"]["accuracy_vs_float32"] == 0.0
    assert all(4 * hidden <= v <= 4.05 * hidden for v in rows["float32"]["bytes_per_token"].values())
    mixed = rows["int8-blockwise/bfloat16"]["bytes_per_token"]
    assert hidden <= mixed["forward_up"] <= 1.1 * hidden and hidden <= mixed["forward_down"] <= 1.1 * hidden
    assert 2 * hidden <= mixed["backward_up"] <= 2.05 * hidden
    assert all(v <= 0.275 for v in rows["int8-blockwise+ef"]["bytes_per_token_vs_float32_hidden"].values())
    fed = [run for run in payload["runs"] if run["row"] == "int8-blockwise+ef"][0]
    assert fed["ef_rows"] == 12 and fed["ef_applied"] == 4  # 12 rows of 8 examples: 4 came back

    rows = command.index("--rows")
    resumed = run_benchmark("wire_codecs", *command[:rows], "--rows", "float32", "bfloat16",
                            *command[command.index("--seeds"):], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "float32, seed 0: saved, kept" in resumed.stdout
    again = json.loads(stem.with_suffix(".json").read_text())
    assert [(r["row"], r["seed"]) for r in again["runs"]] == [("float32", 0), ("bfloat16", 0)]
    assert again["runs"][0]["train_seconds"] == payload["runs"][0]["train_seconds"]  # kept, not rerun
    assert [e["row"] for e in again["summary"]] == ["float32", "bfloat16"]


def test_resuming_refuses_runs_made_with_other_settings(tmp_path):
    module = load_benchmark("wire_codecs")
    settings = {key: 1 for key in module.RUN_SETTINGS} | {"rows": ["float32"], "seeds": [0]}
    saved = tmp_path / "saved.json"
    runs = [{"row": "float32", "seed": 0}]
    saved.write_text(json.dumps({"settings": settings | {"steps": 2}, "runs": runs}))
    with pytest.raises(SystemExit, match="other settings \\(steps\\)"):
        module.saved_runs(saved, settings)
    assert module.saved_runs(tmp_path / "absent.json", settings) == []


def test_a_bad_row_is_refused_before_anything_loads():
    import argparse

    module = load_benchmark("wire_codecs")
    with pytest.raises((ValueError, argparse.ArgumentTypeError), match="int4-blockwise"):
        module.parse_row("int4-blockwise", 64)
    with pytest.raises(argparse.ArgumentTypeError, match="only '\\+ef'"):
        module.parse_row("int8-blockwise+x", 64)
