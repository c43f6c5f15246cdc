"""The cut strength benchmark end to end on the tiny model: a record per row with both proxies, the
JSON and the plot; a bad row is refused before the model loads."""

from __future__ import annotations

import json

from tests.benchmarks.conftest import run_benchmark

TINY = ["--model", "tiny-llama", "--head", "1", "--tail", "1", "--warmup-steps", "3",
        "--inverter-steps", "5", "--public-tokens", "1024"]


def test_each_row_gets_the_trunks_loss_and_the_inverters_accuracy(tmp_path):
    stem = tmp_path / "strength"
    finished = run_benchmark("cut_strength", *TINY, "--rows", "vib:0,vib:300:0.5,dcor:1",
                             "--output", str(stem))
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(stem.with_suffix(".json").read_text())
    assert [r["row"] for r in result["rows"]] == ["vib:0", "vib:300:0.5", "dcor:1"]
    assert stem.with_suffix(".png").stat().st_size > 0
    assert result["clean_lm_loss"] > 0
    for record in result["rows"]:
        assert 0.0 <= record["inverter_token_accuracy"] <= 1.0 and record["lm_loss"] > 0
    bottleneck = result["rows"][1]["settings"]
    assert bottleneck["kl_weight"] == 300.0 and bottleneck["initial_scale"] == 0.5
    assert "mean_scale" in result["rows"][0] and "mean_scale" not in result["rows"][2]  # dcor: no noise
    assert "white-box inverter" in finished.stdout


def test_a_bad_row_is_refused_before_the_model_loads(tmp_path):
    finished = run_benchmark("cut_strength", "--model", "no-such-model", "--rows", "vib:-1",
                             "--output", str(tmp_path / "x"))
    assert finished.returncode == 2 and "vib:-1" in finished.stderr
    finished = run_benchmark("cut_strength", "--model", "no-such-model", "--rows", "mixup:1",
                             "--output", str(tmp_path / "x"))
    assert finished.returncode == 2 and "unknown row 'mixup:1'" in finished.stderr
    assert not (tmp_path / "x.json").exists()


def test_adapting_the_trunk_and_tail_is_measured_against_the_undefended_model_adapted_alike(tmp_path):
    stem = tmp_path / "adapted"
    finished = run_benchmark("cut_strength", *TINY, "--rows", "vib:300", "--adapt-steps", "3",
                             "--output", str(stem))
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(stem.with_suffix(".json").read_text())
    assert result["clean_lm_loss_adapted"] > 0 and result["rows"][0]["lm_loss_adapted"] > 0
    assert result["rows"][0]["lm_loss_adapted"] != result["rows"][0]["lm_loss"]  # the adapters trained
    assert "adapted" in finished.stdout
