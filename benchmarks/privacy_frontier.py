"""Privacy frontier: task accuracy against the strongest attack, for noise and learned defenses.

For every task, defense row and seed, in one run:

* fine-tune federated in process (3 clients, FedAvg; the demo's budget by default) with the
  client-side defense; a learned defense warms up on public text first (each client its own);
* accuracy on the task's validation rows, and the sanity check: accuracy with the server's output
  zeroed (if it barely drops, the privacy comes from ignoring the server);
* attack client 0's own traffic for the first ``--victims`` validation rows, right after the warm-up
  (the earliest checkpoint) and after training, as the server: nearest neighbour, the learned
  inverter (noise-aware but not adaptive), direct forward, and the adaptive, known-plaintext,
  averaging (K transmissions) and generation-traffic attacks (``splitfed.attacks.adaptive``);
  scores count private positions only (the row's own text; template tokens and answers excluded);
* epsilon at delta=1e-5 where noise is used.

Rows: ``none``, ``noise:SIGMA`` (per-token clip at the public median norm on both channels),
``vib:KL[:SCALE]`` and ``vib-bypass:KL[:SCALE]`` (information bottleneck, KL weight and the code's
initial noise scale, default 0.1; with the local bypass),
``dcor:W`` and ``dcor-bypass:W`` (distance correlation weight), and a learned row with noise on
top, ``vib:300:1+noise:0.05`` (the cut's output clipped at the public head output's median norm).
Saves JSON after every cell, a Markdown table and a PNG (x: strongest attack ROUGE-L, y: accuracy).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/privacy_frontier.py --tasks cb --seeds 0 \\
        --rows none,noise:0.05,vib:0.1,vib-bypass:0.1,dcor:1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from splitfed.attacks import AttackHarness, AttackSettings, TrafficAttacks, victim_traffic
from splitfed.attacks.data import victim_rows
from splitfed.federation import FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import LoraSpec, Partition, load_model, whole_logits
from splitfed.privacy import (
    BottleneckSettings,
    ChannelSettings,
    DistanceCorrelationSettings,
    PrivacySettings,
)
from splitfed.privacy.public import warm_up_text
from splitfed.tasks import collate, encode_example, evaluate_cloze, load_task
from splitfed.training.data import iid_shards
from splitfed.training.optim import OptimizerSettings

log = logging.getLogger("privacy_frontier")
GOAL_ROUGE, GOAL_POINTS = 0.2, 0.03
PLOT_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "X", "<", ">")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2",
                        help="model name or local directory / GGUF file (default: the SmolLM2 wheel)")
    parser.add_argument("--tasks", default="cb,rte", help="comma-separated SuperGLUE tasks")
    parser.add_argument("--rows", default="none,noise:0.05,noise:0.2,vib:0.01,vib:0.1,vib-bypass:0.1,"
                                          "dcor:1,dcor-bypass:1",
                        help="comma-separated defense rows: none, noise:SIGMA, vib:KL[:SCALE], "
                             "vib-bypass:KL[:SCALE], dcor:W, dcor-bypass:W, or a learned one with noise "
                             "on top: vib:300:1+noise:0.05")
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma-separated seeds; every row runs at one seed before the next")
    parser.add_argument("--head", type=int, default=2, help="decoder blocks on the client before the cut")
    parser.add_argument("--tail", type=int, default=2, help="decoder blocks on the client after the server")
    parser.add_argument("--clients", type=int, default=3,
                        help="federated clients (IID shards of the training rows)")
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds")
    parser.add_argument("--local-steps", type=int, default=4, help="steps per client per round")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per client step")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    parser.add_argument("--train-examples", type=int, default=480,
                        help="training rows shared out among the clients")
    parser.add_argument("--eval-examples", type=int, default=None, help="default: all validation rows")
    parser.add_argument("--max-length", type=int, default=256,
                        help="tokens per example (longer ones are truncated)")
    parser.add_argument("--victims", type=int, default=32,
                        help="validation rows whose traffic the attacks read")
    parser.add_argument("--average-times", type=int, default=4, help="K of the averaging attack")
    parser.add_argument("--warmup-steps", type=int, default=30,
                        help="public-text warm-up steps of a learned defense")
    parser.add_argument("--cut-lr", type=float, default=1e-3, help="lr of a learned defense and its warm-up "
                        "(1e-2 made the warm-up diverge: public LM loss 4.4 -> 8-10)")
    parser.add_argument("--inverter-steps", type=int, default=200,
                        help="training steps of each attacker's inverter")
    parser.add_argument("--public-tokens", type=int, default=8192,
                        help="public text (WikiText-2) tokens the attacker trains on")
    parser.add_argument("--delta", type=float, default=1e-5,
                        help="delta of the (epsilon, delta) accounting of noise rows")
    parser.add_argument("--output", type=Path, default=None, help="path without suffix for .json/.md/.png "
                        "(default: benchmarks/results/privacy_frontier_MODEL)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the records already in the output JSON and run only the missing cells "
                             "(same model and budget; a run may be spread over sessions or machines)")
    parser.add_argument("--include", type=Path, action="append", default=[], metavar="JSON",
                        help="also keep the cells of this frontier JSON (same model and budget; e.g. a run "
                             "in parallel on another core); may be repeated")
    return parser.parse_args()


ROW_FORMS = "none, noise:S, vib:KL[:SCALE], vib-bypass:KL[:SCALE], dcor:W, dcor-bypass:W, or LEARNED+noise:S"


def _learned_part(kind: str, value: str, args) -> BottleneckSettings | DistanceCorrelationSettings:
    strength = float(value.partition(":")[0])
    common = {"warmup_steps": args.warmup_steps, "bypass": kind.endswith("-bypass"), "warmup_batch_size": 4,
              "warmup_lr": args.cut_lr, "lr": args.cut_lr}
    if kind.startswith("vib"):
        scale = float(rest) if (rest := value.partition(":")[2]) else 0.1
        return BottleneckSettings(kl_weight=strength, initial_scale=scale, **common)
    return DistanceCorrelationSettings(weight=strength, **common)


def row_privacy(row: str, forward_clip: float, backward_clip: float, seed: int, args) -> PrivacySettings:
    """The client's ``privacy:`` block for a row name such as ``vib-bypass:0.1``, or a learned defense
    composed with noise such as ``vib:300:1+noise:0.05`` (the cut's output is then clipped at
    ``forward_clip``, the public head output's median norm, and noised)."""
    parts = row.split("+")
    kinds = [part.partition(":")[0] for part in parts]
    known = {"none", "noise", "vib", "vib-bypass", "dcor", "dcor-bypass"}
    if any(kind not in known for kind in kinds) or (len(parts) > 1 and (
            "none" in kinds or kinds.count("noise") != 1 or len(parts) != 2)):
        raise ValueError(f"unknown row {row!r}: {ROW_FORMS}")
    if kinds == ["none"]:
        return PrivacySettings()
    noise: dict[str, Any] = {}
    learned = None
    for kind, part in zip(kinds, parts, strict=True):
        value = part.partition(":")[2]
        if kind == "noise":
            sigma = float(value)
            noise = {"forward": ChannelSettings(clip=forward_clip, sigma=sigma),
                     "backward": ChannelSettings(clip=backward_clip, sigma=sigma), "delta": args.delta}
        else:
            learned = _learned_part(kind, value, args)
    return PrivacySettings(learned=learned, seed=seed, **noise)


def _worst(*checkpoints: dict[str, Any]) -> dict[str, Any]:
    best = max(checkpoints, key=lambda c: (c["strongest"]["rouge_l"], c["strongest"]["token_accuracy"]))
    return {**best["strongest"], "checkpoint": best["checkpoint"]}


def run_cell(model, tokenizer, task: str, row: str, seed: int, shards, evaluation, harness, rows,
             args) -> dict[str, Any]:
    started = time.perf_counter()
    privacy = row_privacy(row, harness.forward_median, harness.backward_median, seed, args)
    pad = int(tokenizer.pad_token_id)
    settings = FederationSettings(
        clients=args.clients, rounds=args.rounds, local_steps=args.local_steps, batch_size=args.batch_size,
        seed=seed, partition=PartitionSettings(head=args.head, tail=args.tail),
        adapter=LoraSpec(r=8, alpha=16.0), optimizer=OptimizerSettings(lr=args.lr), privacy=privacy)
    public = None if privacy.learned is None else warm_up_text(privacy.learned, tokenizer)
    federation = InProcessFederation(model, shards, lambda batch: collate(batch, pad_token_id=pad), settings,
                                     public_text=public)
    warmup_seconds = time.perf_counter() - started
    victim = federation.clients[0]
    attacks = TrafficAttacks(harness, privacy, seed=10_000 + seed,
                             planned_steps=args.rounds * args.local_steps)
    trunk = federation.server.trunk
    earliest = attacks.run(victim_traffic(victim.head, victim.defense, rows, args.average_times), trunk, rows)
    train_started = time.perf_counter()
    losses: list[float] = []
    for _ in range(args.rounds):
        losses += federation.train_round()
    train_seconds = time.perf_counter() - train_started
    metrics = evaluate_cloze(federation.logits, tokenizer, evaluation, batch_size=8,
                             max_length=args.max_length)
    final = attacks.run(victim_traffic(victim.head, victim.defense, rows, args.average_times), trunk, rows)
    victim.zeroed_server()
    zeroed = evaluate_cloze(victim.logits, tokenizer, evaluation, batch_size=8, max_length=args.max_length)
    reports = federation.privacy_reports()
    epsilons = [float(r["epsilon"]) for r in reports if r["epsilon"] != "inf"]
    earliest["checkpoint"], final["checkpoint"] = "after warm-up", "after training"
    return {"task": task, "row": row, "seed": seed, "privacy": privacy.model_dump(mode="json"),
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "eval_loss": metrics["loss"],
            "zeroed_accuracy": zeroed["accuracy"], "train_losses": losses,
            "epsilon": max(epsilons) if epsilons and privacy.forward.protected else math.inf,
            "strongest": _worst(earliest, final), "earliest": earliest, "final": final,
            "warmup_seconds": warmup_seconds, "train_seconds": train_seconds,
            "seconds": time.perf_counter() - started}


BUDGET_ARGS = ("model", "head", "tail", "clients", "rounds", "local_steps", "batch_size", "lr",
               "train_examples", "eval_examples", "max_length", "victims", "average_times", "warmup_steps",
               "cut_lr", "inverter_steps", "public_tokens")


def previous_records(path: Path, args: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The zero-shot accuracies and the records of an earlier run saved at ``path``, refused when its
    budget differs from ``args`` (cells measured under another budget are not comparable)."""
    previous = json.loads(path.read_text())
    changed = [k for k in BUDGET_ARGS if previous["args"].get(k) != args[k]]
    if changed:
        raise SystemExit(f"{path} was measured with other settings ({', '.join(changed)}); "
                         "use another --output or the same settings")
    return dict(previous.get("zero_shot", {})), list(previous["records"])


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per task and row: accuracy mean and spread over seeds, worst attack over seeds."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in records):
        for row in dict.fromkeys(r["row"] for r in records if r["task"] == task):
            cell = [r for r in records if r["task"] == task and r["row"] == row]
            acc = [r["accuracy"] for r in cell]
            worst = max(cell, key=lambda r: r["strongest"]["rouge_l"])
            lines.append({
                "task": task, "row": row, "seeds": len(cell), "accuracy_mean": statistics.fmean(acc),
                "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "accuracy_min": min(acc), "accuracy_max": max(acc),
                "zeroed_accuracy_mean": statistics.fmean(r["zeroed_accuracy"] for r in cell),
                "strongest": worst["strongest"], "epsilon": max(r["epsilon"] for r in cell),
                "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in cell),
                "warmup_seconds_mean": statistics.fmean(r["warmup_seconds"] for r in cell)})
    return lines


def majority_accuracy(examples: list[Any]) -> float:
    """Accuracy of always answering the commonest label of ``examples``."""
    counts = Counter(e.label for e in examples)
    return max(counts.values()) / len(examples)


def unlearned(lines: list[dict[str, Any]], majority: dict[str, float]) -> list[str]:
    """Tasks whose undefended row does not beat the majority class by more than the goal's 3 points:
    there the frontier cannot tell a defense that keeps the task from one that removes it."""
    return [line["task"] for line in lines if line["row"] == "none" and line["task"] in majority
            and line["accuracy_mean"] < majority[line["task"]] + GOAL_POINTS]


def goal_check(lines: list[dict[str, Any]], majority: dict[str, float] | None = None) -> dict[str, list[str]]:
    """Per task, the rows meeting the goal: strongest ROUGE-L <= 0.2 and mean accuracy within 3 points
    of the undefended row; none on a task the undefended row has not learned (``unlearned``)."""
    skip = set(unlearned(lines, majority or {}))
    met: dict[str, list[str]] = {}
    for task in dict.fromkeys(line["task"] for line in lines):
        base = next((line for line in lines if line["task"] == task and line["row"] == "none"), None)
        met[task] = [] if base is None or task in skip else [
            line["row"] for line in lines if line["task"] == task and line["row"] != "none"
            and line["strongest"]["rouge_l"] <= GOAL_ROUGE
            and line["accuracy_mean"] >= base["accuracy_mean"] - GOAL_POINTS]
    return met


def markdown(lines: list[dict[str, Any]], zero_shot: dict[str, float], majority: dict[str, float]) -> str:
    out = ["| task | defense | seeds | accuracy (mean ± sd) | server zeroed | strongest attack (ROUGE-L / "
           "token acc, private positions) | epsilon | train s |", "|---|---|---:|---|---:|---|---:|---:|"]
    for line in lines:
        s = line["strongest"]
        eps = "inf" if math.isinf(line["epsilon"]) else f"{line['epsilon']:.3g}"
        out.append(f"| {line['task']} | {line['row']} | {line['seeds']} | {line['accuracy_mean']:.3f} ± "
                   f"{line['accuracy_sd']:.3f} | {line['zeroed_accuracy_mean']:.3f} | {s['attack']} "
                   f"{s['rouge_l']:.2f} / {s['token_accuracy']:.2f} ({s['checkpoint']}) | {eps} | "
                   f"{line['train_seconds_mean']:.0f} |")
    out.append("")
    out.append("Zero-shot accuracy: " + ", ".join(f"{t} {a:.3f}" for t, a in zero_shot.items()))
    out.append("")
    out.append("Majority class: " + ", ".join(f"{t} {a:.3f}" for t, a in majority.items()))
    for task in unlearned(lines, majority):
        base = next(line for line in lines if line["task"] == task and line["row"] == "none")
        out.append(f"\n**{task}: not learned at this budget.** Undefended training reaches "
                   f"{base['accuracy_mean']:.3f}, within {GOAL_POINTS * 100:.0f} points of always answering "
                   f"the commonest label ({majority[task]:.3f}), so this frontier cannot show a "
                   "defense keeping the task (every row would), only what the server reads.")
    return "\n".join(out) + "\n"


def plot(lines: list[dict[str, Any]], majority: dict[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(line["task"] for line in lines))
    fig, axes = plt.subplots(1, len(tasks), figsize=(9.0 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [line for line in lines if line["task"] == task]
        base = next((line for line in rows if line["row"] == "none"), None)
        if base is not None:
            ax.axhspan(base["accuracy_mean"] - GOAL_POINTS, 1.0, xmin=0, xmax=GOAL_ROUGE / 1.05,
                       color="tab:green", alpha=0.12, label="goal")
        for index, line in enumerate(rows):
            x = line["strongest"]["rouge_l"]
            ax.errorbar(x, line["accuracy_mean"], yerr=line["accuracy_sd"], capsize=3,
                        fmt=PLOT_MARKERS[index % len(PLOT_MARKERS)],
                        label=f"{line['row']} ({line['seeds']} seed{'s' if line['seeds'] != 1 else ''})")
            ax.plot([x], [line["zeroed_accuracy_mean"]], "x", color="grey",
                    label="server output zeroed" if index == 0 else None)
        if task in majority:
            ax.axhline(majority[task], color="grey", linestyle="--", linewidth=0.8, label="majority class")
        ax.set(xlim=(0, 1.05), ylim=(0, 1), xlabel="strongest attack ROUGE-L on private positions",
               ylabel="accuracy (x: server output zeroed)", title=f"{task}: privacy frontier")
        ax.grid(alpha=0.3)
        # Points cluster near ROUGE-L 1, so rows are named in a legend beside the axes, not on the points.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save(result: dict[str, Any], output: Path, started: float) -> None:
    """The summary, the goal check, the JSON, the Markdown table and the plot of ``result``."""
    lines = summarise(result["records"])
    result.update(summary=lines, goal_met=goal_check(lines, result["majority"]),
                  seconds=time.perf_counter() - started)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    output.with_suffix(".md").write_text(markdown(lines, result["zero_shot"], result["majority"]))
    plot(lines, result["majority"], output.with_suffix(".png"))


def main() -> None:
    args = _args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    output = args.output or Path("benchmarks/results") / f"privacy_frontier_{args.model}"
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows_spec = args.rows.split(",")
    for row in rows_spec:  # refuse a bad row before anything runs
        row_privacy(row, 1.0, 1.0, 0, args)
    result: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "machine": platform.machine(), "threads": torch.get_num_threads()},
        "zero_shot": {}, "majority": {}, "records": []}
    if args.merge and output.with_suffix(".json").is_file():
        result["zero_shot"], result["records"] = previous_records(output.with_suffix(".json"), result["args"])
        log.info("merging: %d cells already measured", len(result["records"]))
    for path in args.include:
        zero_shot, records = previous_records(path, result["args"])
        have = {(r["task"], r["row"], r["seed"]) for r in result["records"]}
        result["records"] += [r for r in records if (r["task"], r["row"], r["seed"]) not in have]
        result["zero_shot"] = {**zero_shot, **result["zero_shot"]}
        log.info("included %s: %d cells", path, len(records))
    for task in dict.fromkeys([*(r["task"] for r in result["records"]), *args.tasks.split(",")]):
        result["majority"][task] = majority_accuracy(load_task(task, "val", limit=args.eval_examples))
    done = {(r["task"], r["row"], r["seed"]) for r in result["records"]}
    model, tokenizer = load_model(args.model)
    attack_settings = AttackSettings(model=args.model, head=args.head, tail=args.tail,
                                     public_tokens=args.public_tokens,
                                     inverter={"steps": args.inverter_steps})
    harness = AttackHarness(model, tokenizer, Partition(args.head, args.tail), attack_settings)
    for task in args.tasks.split(","):
        train = load_task(task, "train", limit=args.train_examples)
        evaluation = load_task(task, "val", limit=args.eval_examples)
        encoded = [encode_example(tokenizer, e, args.max_length) for e in train]
        rows = victim_rows(tokenizer, task, "val", args.victims, args.max_length)
        if task not in result["zero_shot"]:
            zero = evaluate_cloze(whole_logits(model), tokenizer, evaluation, batch_size=8,
                                  max_length=args.max_length)
            result["zero_shot"][task] = zero["accuracy"]
        log.info("%s: zero-shot accuracy %.3f on %d rows", task, result["zero_shot"][task], len(evaluation))
        for seed in seeds:  # every row at one seed before the next seed: partial runs stay comparable
            shards = iid_shards(encoded, args.clients, seed)
            for row in rows_spec:
                if (task, row, seed) in done:
                    continue
                record = run_cell(model, tokenizer, task, row, seed, shards, evaluation, harness, rows, args)
                record["eval_examples"] = len(evaluation)
                result["records"].append(record)
                s = record["strongest"]
                log.info("%s %s seed %d: acc %.3f (zeroed %.3f), strongest %s R-L %.3f (%s), %.0fs", task,
                         row, seed, record["accuracy"], record["zeroed_accuracy"], s["attack"],
                         s["rouge_l"], s["checkpoint"], record["seconds"])
                save(result, output, started)
    if result["records"]:
        save(result, output, started)  # also when every cell was merged or included
    print(markdown(result["summary"], result["zero_shot"], result["majority"]))
    print("goal met by:", result["goal_met"])
    print(f"saved {output.with_suffix('')}.json/.md/.png in {result['seconds']:.0f}s")


if __name__ == "__main__":
    main()
