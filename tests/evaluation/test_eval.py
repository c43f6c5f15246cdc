"""``splitfed eval`` on a tiny model: every method runs, split with one client equals centralized,
generation goes through the split model's KV caches, and the report says what was skipped."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from splitfed.evaluation import EvalResult, EvalSettings, comparisons, markdown_report, plot_losses, run_eval
from splitfed.evaluation.methods import (
    MethodResult,
    federation_settings,
    greedy_generator,
    method_privacy,
    skew_labels,
    zero_shot,
)
from splitfed.models import load_model
from splitfed.tasks import GenerationExample, TaskData, generate_answers, load_examples


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> EvalResult:
    settings = EvalSettings(model="tiny-llama", dtype="float32", tasks=["cb", "xsum"], clients=2, steps=4,
                            rounds=2,
                            batch_size=2, train_examples=16, eval_examples=4, max_length=96,
                            max_new_tokens=4, max_words=12, lr=1e-2,
                            output=tmp_path_factory.mktemp("eval"))
    return run_eval(settings)


def test_every_method_ran_with_the_same_steps(result: EvalResult) -> None:
    assert list(result.tasks) == ["cb", "xsum"]
    assert {k: v for k, v in result.tasks["cb"].items() if k != "majority"} == {
        "kind": "classification", "metric": "accuracy", "train": 16, "eval": 4, "classes": 3}
    for task in ("cb", "xsum"):
        rows = {r.method: r for r in result.results if r.task == task}
        assert list(rows) == ["zero-shot", "centralized", "split", "federated-iid", "federated-noniid",
                              "federated-noise"]
        assert rows["zero-shot"].losses == []
        for method in ("centralized", "split", "federated-iid", "federated-noniid"):
            assert len(rows[method].losses) == 4 and rows[method].skipped is None
        assert rows["federated-noise"].skipped and "noise" in rows["federated-noise"].skipped
        assert (result.get(task, "zero-shot").metrics["n"]) == 4
    assert set(result.get("xsum", "centralized").metrics) >= {"rouge1", "rouge2", "rougeL", "samples"}


def test_split_with_one_client_equals_centralized(result: EvalResult) -> None:
    for task in ("cb", "xsum"):
        central, split = result.get(task, "centralized"), result.get(task, "split")
        assert split.losses == pytest.approx(central.losses, abs=1e-5)
    cb_central, cb_split = result.get("cb", "centralized").metrics, result.get("cb", "split").metrics
    assert cb_split["loss"] == pytest.approx(cb_central["loss"], abs=1e-5)
    assert cb_split["accuracy"] == cb_central["accuracy"]
    # training changed the model: the eval loss moved away from zero-shot
    assert cb_central["loss"] != pytest.approx(result.get("cb", "zero-shot").metrics["loss"], abs=1e-4)


def test_report_table_json_and_plot(result: EvalResult, tmp_path: Path) -> None:
    report = markdown_report(result, "splitfed eval ...")
    lines = report.splitlines()
    assert lines[1] == "| method | cb (acc / macro-F1) | xsum (R-1 / R-2 / R-L) |"
    majority = max(Counter(e.label for e in load_examples("cb", "val", 4)).values()) / 4
    assert lines[3] == f"| majority class (no model) | {100 * majority:.1f} | - |"
    assert lines[5].startswith("| centralized (whole model) | ")
    assert "| federated, 2 clients, IID + defense | skipped | skipped |" in report
    assert "**cb**" in report and "(correct/n)" in report  # the per-task detail table
    assert "## Skipped" in report and "splitfed eval ..." in report
    png = plot_losses(result, tmp_path / "losses.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from splitfed.evaluation import save_result

    path = save_result(result, tmp_path)
    saved = json.loads(path.read_text())
    assert saved["results"][1]["method"] == "centralized" and len(saved["results"][1]["losses"]) == 4
    from splitfed.evaluation.run import load_result

    assert markdown_report(load_result(path)) == markdown_report(result)


def test_comparison_arithmetic_and_no_verdict() -> None:
    result = EvalResult(settings={"clients": 3, "alpha": 0.5, "model": "m"}, platform={},
                        tasks={"cb": {"kind": "classification", "metric": "accuracy", "eval": 8},
                               "xsum": {"kind": "generation", "metric": "rouge", "eval": 8}})
    for method, acc, rouge_l in [("zero-shot", 0.40, 0.10), ("centralized", 0.70, 0.20),
                                 ("federated-iid", 0.685, 0.185), ("federated-noniid", 0.675, 0.21)]:
        result.results.append(MethodResult(method, "cb", {"accuracy": acc}))
        result.results.append(MethodResult(method, "xsum", {"rouge1": rouge_l, "rouge2": rouge_l,
                                                            "rougeL": rouge_l}))
    checks = {(c["task"], c["method"]): c for c in comparisons(result)}
    assert checks["cb", "federated-iid"]["gap_to_centralized"] == pytest.approx(-1.5)
    assert checks["cb", "federated-noniid"]["gap_to_centralized"] == pytest.approx(-2.5)
    assert checks["xsum", "federated-iid"]["gap_to_centralized"] == pytest.approx(-1.5)  # ROUGE-L points
    assert checks["xsum", "federated-noniid"]["gap_to_zero_shot"] == pytest.approx(11.0)
    report = markdown_report(result)
    assert "- cb, federated-iid: 68.5; centralized 70.0 (-1.5), zero-shot 40.0 (+28.5)" in report
    for wording in ("target", "meets", "MISSES", "allowed"):
        assert wording not in report


def test_steps_must_split_evenly(tiny) -> None:
    model, _ = tiny
    with pytest.raises(ValueError, match="multiple of rounds x clients = 6"):
        federation_settings(EvalSettings(model="tiny-llama", steps=8, rounds=2, clients=3), model, 3)


def test_noise_row_skips_without_a_defense_and_trains_with_one(tiny) -> None:
    from splitfed.evaluation import noise_skip_reason
    from splitfed.privacy import PrivacySettings

    assert "privacy.forward.sigma" in noise_skip_reason(EvalSettings())
    defense = PrivacySettings(forward={"clip": 1.0, "sigma": 0.5}, seed=0)
    settings = EvalSettings(model="tiny-llama", steps=4, rounds=2, clients=2, privacy=defense)
    assert noise_skip_reason(settings) is None
    model, _ = tiny
    noise_row = federation_settings(settings, model, 2, method_privacy(settings, "federated-noise"))
    assert noise_row.privacy == defense
    assert method_privacy(settings, "federated-network") == defense  # the networked run, as deployed
    for method in ("centralized", "split", "federated-iid", "federated-noniid"):  # the others: no defense
        assert method_privacy(settings, method) is None
    assert not federation_settings(settings, model, 2).privacy.enabled


def test_noise_row_trains_with_the_defense_and_reports_epsilon(tmp_path: Path) -> None:
    from splitfed.privacy import PrivacySettings

    settings = EvalSettings(model="tiny-llama", tasks=["cb"], methods=["federated-iid", "federated-noise"],
                            clients=2, steps=4, rounds=2, batch_size=2, train_examples=16, eval_examples=4,
                            max_length=96, lr=1e-2, output=tmp_path,
                            privacy=PrivacySettings(forward={"clip": 1.0, "sigma": 1.0},
                                                    backward={"clip": 1.0, "sigma": 1.0}, seed=0))
    result = run_eval(settings)
    plain, noised = result.get("cb", "federated-iid"), result.get("cb", "federated-noise")
    assert noised.skipped is None and len(noised.losses) == 4
    assert noised.losses != pytest.approx(plain.losses, abs=1e-4)  # the noise changed training
    assert 0 < noised.metrics["epsilon"] < float("inf") and noised.metrics["delta"] == 1e-5
    assert "epsilon" not in plain.metrics
    label = ("IID + defense (forward C=1.0 sigma=1.0, backward C=1.0 sigma=1.0; "
             f"epsilon {noised.metrics['epsilon']}")
    assert label in markdown_report(result)


def test_generation_through_split_caches_equals_hf_generate(tiny) -> None:
    model, tokenizer = tiny
    examples = [GenerationExample("The passage is abc.", "x", "Sum."),
                GenerationExample("The passage is a much longer one.", "y", "Sum.")]
    split = zero_shot(model, EvalSettings(model="tiny-llama")).split
    answers = generate_answers(greedy_generator(split, tokenizer), tokenizer, examples, max_new_tokens=5,
                               batch_size=2)
    for example, answer in zip(examples, answers, strict=True):
        from splitfed.tasks.chat import prompt_ids

        ids = torch.tensor([prompt_ids(tokenizer, example)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        assert answer == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_non_iid_generation_labels_are_length_terciles() -> None:
    train = [GenerationExample("u", " ".join(["w"] * n)) for n in (1, 2, 3, 4, 5, 6)]
    assert skew_labels(TaskData("t", "generation", "rouge", train, train)) == [0, 0, 1, 1, 2, 2]
    cb = load_examples("cb", "train", 5)
    assert skew_labels(TaskData("cb", "classification", "accuracy", cb, cb)) == [e.label for e in cb]


def test_a_run_says_its_plan_up_front_and_an_estimate_after_a_timed_step(monkeypatch) -> None:
    from rich.console import Console

    from splitfed.evaluation.run import RunPlan

    settings = EvalSettings(model="tiny-llama", tasks=["cb"], clients=2, steps=4, rounds=2)
    tasks = [TaskData("cb", "classification", "accuracy", [None] * 16, [None] * 4),
             TaskData("rte", "classification", "accuracy", [None] * 20, [None] * 8)]
    plan = RunPlan.of(settings, tasks)
    text = "\n".join(plan.lines())
    assert "2 task(s) x 6 method(s): cb (16 training, 4 held-out rows), rte (20 training, 8" in text
    assert "centralized, split, federated-iid, federated-noniid: 4 steps each, 32 steps in all" in text
    assert "federated-noise" not in text.split("scoring")[0]  # skipped: no defense given
    clock = iter([10.0, 12.5, 13.0, 20.0, 30.0])
    monkeypatch.setattr("splitfed.evaluation.run.time.perf_counter", lambda: next(clock))
    console = Console(record=True, width=200)
    for task in ("cb", "cb", "cb", "rte", "rte"):  # a new task's steps are timed again
        plan.stepped(console, task)
    said = console.export_text()
    assert said.count("estimate") == 2
    assert "estimate (cb): 2.5s per step, so about 75s of training left (30 steps)" in said
    assert "estimate (rte): 10.0s per step, so about 4 min of training left (27 steps)" in said
