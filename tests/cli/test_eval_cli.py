"""`splitfed eval`: its help, a tiny end-to-end run, and clear errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from splitfed.cli import app

runner = CliRunner()


def test_eval_help_names_methods_and_tasks():
    result = runner.invoke(app, ["eval", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for word in ("--task", "--method", "--steps", "federated-noniid", "xsum", "--config"):
        assert word in result.output


def test_eval_zero_shot_and_centralized_on_tiny_model(tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--model", "tiny-llama", "--task", "copa", "--method", "zero-shot",
                                 "--method", "centralized", "--steps", "2", "--rounds", "1",
                                 "--train-examples", "8", "--eval-examples", "4", "--set", "batch_size=2",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in saved["results"]] == ["zero-shot", "centralized"]
    assert saved["settings"]["batch_size"] == 2 and saved["tasks"]["copa"]["eval"] == 4
    table = (out / "results.md").read_text()
    assert "| zero-shot (no training) |" in table and "copa (acc)" in table
    assert (out / "losses.png").stat().st_size > 0


def test_eval_rejects_bad_input_clearly(tmp_path):
    result = runner.invoke(app, ["eval", "--model", "tiny-llama", "--method", "best", "--output",
                                 str(tmp_path)])
    assert result.exit_code == 2 and "methods.0" in result.output
    result = runner.invoke(app, ["eval", "--model", "tiny-llama", "--task", "squad", "--method", "zero-shot",
                                 "--output", str(tmp_path)])
    assert result.exit_code == 2 and "unknown task 'squad'" in result.output
