"""The privacy frontier benchmark end to end on the tiny model: a cell per row and seed, the JSON, the
table, the plot, and ``--merge`` adding only the missing cells (refused under another budget)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tests.benchmarks.conftest import Finished, load_benchmark, run_benchmark

TINY_BUDGET = ["--model", "tiny-llama", "--tasks", "cb", "--seeds", "0", "--head", "1", "--tail", "1",
               "--rounds", "1", "--local-steps", "1", "--batch-size", "2", "--train-examples", "8",
               "--eval-examples", "4", "--max-length", "64", "--victims", "2", "--average-times", "2",
               "--warmup-steps", "2", "--inverter-steps", "3", "--public-tokens", "512"]


def frontier(output: Path, *extra: str) -> Finished:
    return run_benchmark("privacy_frontier", *TINY_BUDGET, "--output", str(output), *extra)


def test_frontier_saves_each_cell_and_merge_adds_only_the_missing_ones(tmp_path):
    stem = tmp_path / "frontier"
    first = frontier(stem, "--rows", "none")
    assert first.returncode == 0, first.stderr[-3000:]
    before = json.loads(stem.with_suffix(".json").read_text())
    assert [(r["row"], r["seed"]) for r in before["records"]] == [("none", 0)]
    assert stem.with_suffix(".png").stat().st_size > 0

    merged = frontier(stem, "--rows", "none,noise:0.1", "--merge")
    assert merged.returncode == 0, merged.stderr[-3000:]
    after = json.loads(stem.with_suffix(".json").read_text())
    assert [(r["row"], r["seed"]) for r in after["records"]] == [("none", 0), ("noise:0.1", 0)]
    assert after["records"][0] == before["records"][0]  # kept, not measured again
    noise = after["records"][1]
    assert noise["privacy"]["forward"]["sigma"] == 0.1 and 0 < noise["epsilon"] < float("inf")
    assert {line["row"] for line in after["summary"]} == {"none", "noise:0.1"}
    assert "| cb | noise:0.1 | 1 |" in stem.with_suffix(".md").read_text()

    other_budget = frontier(stem, "--rows", "none", "--merge", "--rounds", "2")
    assert other_budget.returncode != 0 and "rounds" in other_budget.stderr
    assert json.loads(stem.with_suffix(".json").read_text()) == after  # nothing lost

    # a run on another core, included: its cells are kept and only the composite row is measured
    combined = tmp_path / "combined"
    both = frontier(combined, "--rows", "none,vib:0.1+noise:0.1", "--include", str(stem.with_suffix(".json")))
    assert both.returncode == 0, both.stderr[-3000:]
    joined = json.loads(combined.with_suffix(".json").read_text())
    assert joined["records"][:2] == after["records"] and joined["zero_shot"] == after["zero_shot"]
    composite = joined["records"][2]
    assert composite["row"] == "vib:0.1+noise:0.1"
    assert composite["privacy"]["learned"]["kl_weight"] == 0.1
    assert composite["privacy"]["forward"]["sigma"] == 0.1 and 0 < composite["epsilon"] < float("inf")
    assert "| cb | vib:0.1+noise:0.1 | 1 |" in combined.with_suffix(".md").read_text()
    refused = frontier(tmp_path / "other", "--rows", "none", "--rounds", "2", "--include",
                       str(stem.with_suffix(".json")))
    assert refused.returncode != 0 and "rounds" in refused.stderr


def test_an_unknown_row_is_refused_before_anything_runs():
    frontier_module = load_benchmark("privacy_frontier")
    args = argparse.Namespace(delta=1e-5, warmup_steps=2, cut_lr=0.01)
    assert frontier_module.row_privacy("noise:0.1", 2.0, 3.0, 0, args).forward.sigma == 0.1
    assert frontier_module.row_privacy("vib-bypass:0.1:0.3", 2.0, 3.0, 0, args).learned.initial_scale == 0.3
    with pytest.raises(ValueError, match="laplace:1"):
        frontier_module.row_privacy("laplace:1", 2.0, 3.0, 0, args)
    composite = frontier_module.row_privacy("vib:300:1+noise:0.05", 2.0, 3.0, 7, args)
    assert (composite.learned.kl_weight, composite.learned.initial_scale) == (300.0, 1.0)
    assert (composite.forward.clip, composite.forward.sigma, composite.backward.clip) == (2.0, 0.05, 3.0)
    assert composite.seed == 7
    for bad in ("noise:0.1+noise:0.2", "none+noise:0.1", "vib:1+dcor:1", "vib:1+noise:0.1+dcor:1"):
        with pytest.raises(ValueError, match="LEARNED\\+noise"):
            frontier_module.row_privacy(bad, 2.0, 3.0, 0, args)


def test_a_task_the_undefended_row_has_not_learned_meets_no_goal_and_says_so():
    frontier_module = load_benchmark("privacy_frontier")
    strong = {"attack": "averaging-4", "rouge_l": 0.1, "token_accuracy": 0.1, "checkpoint": "after training"}

    def line(task, row, accuracy):
        return {"task": task, "row": row, "seeds": 1, "accuracy_mean": accuracy, "accuracy_sd": 0.0,
                "zeroed_accuracy_mean": 0.5, "strongest": strong, "epsilon": float("inf"),
                "train_seconds_mean": 1.0}

    lines = [line("cb", "none", 0.70), line("cb", "vib:1", 0.69), line("rte", "none", 0.531),
             line("rte", "vib:1", 0.53)]
    majority = {"cb": 0.50, "rte": 0.527}
    assert frontier_module.unlearned(lines, majority) == ["rte"]
    assert frontier_module.goal_check(lines, majority) == {"cb": ["vib:1"], "rte": []}
    assert frontier_module.goal_check(lines) == {"cb": ["vib:1"], "rte": ["vib:1"]}  # without the baseline
    table = frontier_module.markdown(lines, {"cb": 0.5, "rte": 0.466}, majority)
    assert "Majority class: cb 0.500, rte 0.527" in table and "**rte: not learned at this budget.**" in table
    assert "**cb:" not in table
    examples = [argparse.Namespace(label=label) for label in (0, 1, 1, 2)]
    assert frontier_module.majority_accuracy(examples) == 0.5
