"""bf16 base vs fp32 base, adapters fp32 either way: split training throughput and task accuracy.

Two measurements, in one run, on the same machine:

* **throughput**: split training steps (head -> trunk -> tail, LoRA on every part, the frozen base in
  the dtype under test) on the same batches, the two dtypes alternating in ``--blocks`` blocks of
  ``--block-steps`` steps (this machine's speed drifts minute to minute); the ratio of each block pair,
  and their median, as tokens/s of bf16 over fp32;
* **accuracy**: the federated run of the privacy frontier's undefended row (3 clients, IID shards,
  FedAvg, in process) for each task and seed, once with each base dtype, scored on the validation rows
  (accuracy, macro-F1). The same seeds give the same shards, batches and adapter initialisations.

Saves JSON and Markdown under ``benchmarks/results/``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/precision.py --tasks cb --seeds 0,1,2
    .venv/bin/python benchmarks/precision.py --tasks rte --rounds 30 --local-steps 12 \\
        --train-examples 1000 --output benchmarks/results/precision_smollm2_rte_long --merge
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from splitfed.client import SplitClient
from splitfed.federation import FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.server import LocalTrunk
from splitfed.tasks import collate, encode_example, evaluate_cloze, load_task
from splitfed.training.data import iid_shards
from splitfed.training.optim import OptimizerSettings

log = logging.getLogger("precision")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="model name, local directory or GGUF file")
    parser.add_argument("--tasks", default="cb", help="comma-separated SuperGLUE tasks (empty: throughput "
                                                      "only)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-examples", type=int, default=480)
    parser.add_argument("--eval-examples", type=int, default=None, help="default: all validation rows")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=3, help="throughput: block pairs (0: skip)")
    parser.add_argument("--block-steps", type=int, default=4, help="throughput: training steps per block")
    parser.add_argument("--throughput-length", type=int, default=128, help="throughput: tokens per row")
    parser.add_argument("--output", type=Path, default=None,
                        help="path without suffix (default: benchmarks/results/precision_MODEL)")
    parser.add_argument("--merge", action="store_true", help="keep the cells already in the output JSON")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="the base dtypes to run (a grid may be "
                                                                      "split over processes)")
    parser.add_argument("--include", type=Path, action="append", default=[], metavar="JSON",
                        help="also keep the cells of this precision JSON (same budget, e.g. run in parallel)")
    parser.add_argument("--fp32-from-frontier", type=Path, default=None, metavar="JSON",
                        help="take the float32 cells from this privacy-frontier JSON's undefended row (the "
                             "same federated run, float32 base), where its budget equals this run's")
    return parser.parse_args()


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Split training tokens/s with a bf16 and an fp32 frozen base, in alternating blocks."""
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.throughput_length)
    batch = {"input_ids": torch.randint(3, 250, shape, generator=generator)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["labels"] = batch["input_ids"].clone()
    clients = {}
    for name, dtype in DTYPES.items():
        model, _ = load_model(args.model, dtype=dtype)
        split = split_model(model, Partition(args.head, args.tail))
        for part in split.parts.values():
            init_adapter(part, LoraSpec(), 0)
        clients[name] = SplitClient("c", split.head, split.tail, LocalTrunk(split.trunk),
                                    OptimizerSettings(lr=args.lr))
        clients[name].train_step(batch)  # warm-up
    tokens = args.batch_size * args.throughput_length * args.block_steps
    rates: dict[str, list[float]] = {name: [] for name in DTYPES}
    for block in range(args.blocks):
        for name, client in clients.items():
            started = time.perf_counter()
            for _ in range(args.block_steps):
                client.train_step(batch)
            rates[name].append(tokens / (time.perf_counter() - started))
        log.info("throughput block %d: %s", block,
                 ", ".join(f"{name} {rates[name][-1]:.0f} tok/s" for name in DTYPES))
    ratios = [b / f for b, f in zip(rates["bfloat16"], rates["float32"], strict=True)]
    return {"tokens_per_s": rates, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "batch": [args.batch_size, args.throughput_length]}


def accuracy_cell(args, task: str, dtype: str, seed: int, encoded, evaluation, tokenizer) -> dict[str, Any]:
    model, _ = load_model(args.model, dtype=DTYPES[dtype])
    settings = FederationSettings(clients=args.clients, rounds=args.rounds, local_steps=args.local_steps,
                                  batch_size=args.batch_size, seed=seed,
                                  partition=PartitionSettings(head=args.head, tail=args.tail),
                                  adapter=LoraSpec(), optimizer=OptimizerSettings(lr=args.lr))
    pad = int(tokenizer.pad_token_id)
    federation = InProcessFederation(model, iid_shards(encoded, args.clients, seed),
                                     lambda rows: collate(rows, pad_token_id=pad), settings)
    started = time.perf_counter()
    losses: list[float] = []
    for _ in range(args.rounds):
        losses += federation.train_round()
    seconds = time.perf_counter() - started
    metrics = evaluate_cloze(federation.logits, tokenizer, evaluation, batch_size=8,
                             max_length=args.max_length)
    return {"task": task, "dtype": dtype, "seed": seed, "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "eval_loss": metrics["loss"], "train_losses": losses,
            "train_seconds": seconds}


BUDGET = ("model", "head", "tail", "clients", "rounds", "local_steps", "batch_size", "lr", "train_examples",
          "eval_examples", "max_length")


def frontier_records(path: Path, args: argparse.Namespace,
                     have: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The privacy frontier's undefended cells (a float32 base) as float32 cells of this run; refused
    unless the budget is the same."""
    frontier = json.loads(path.read_text())
    for name in BUDGET:
        if str(frontier["args"].get(name)) != str(getattr(args, name)):
            raise SystemExit(f"{path}: {name} is {frontier['args'].get(name)!r}, this run's is "
                             f"{getattr(args, name)!r}: not the same budget")
    seen = {(r["task"], r["dtype"], r["seed"]) for r in have}
    tasks = set(args.tasks.split(","))
    return [{"task": r["task"], "dtype": "float32", "seed": r["seed"], "accuracy": r["accuracy"],
             "macro_f1": r["macro_f1"], "eval_loss": r["eval_loss"], "train_losses": r["train_losses"],
             "train_seconds": r["train_seconds"], "source": str(path)}
            for r in frontier["records"] if r["row"] == "none" and r["task"] in tasks
            and (r["task"], "float32", r["seed"]) not in seen]


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines = []
    for task in dict.fromkeys(r["task"] for r in records):
        line: dict[str, Any] = {"task": task}
        for dtype in DTYPES:
            values = [r["accuracy"] for r in records if r["task"] == task and r["dtype"] == dtype]
            seconds = [r["train_seconds"] for r in records if r["task"] == task and r["dtype"] == dtype]
            line[dtype] = {"seeds": len(values), "mean": statistics.mean(values) if values else None,
                           "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                           "train_seconds": statistics.mean(seconds) if seconds else None}
        paired = [(b["accuracy"] - f["accuracy"])
                  for b in records for f in records
                  if b["task"] == f["task"] == task and b["seed"] == f["seed"]
                  and b["dtype"] == "bfloat16" and f["dtype"] == "float32"]
        line["bf16_minus_fp32_points"] = 100 * statistics.mean(paired) if paired else None
        lines.append(line)
    return lines


def markdown(result: dict[str, Any]) -> str:
    rows = ["| task | fp32 accuracy | bf16 accuracy | bf16 - fp32 (points, paired by seed) | seeds | "
            "train s fp32 / bf16 |", "|---|---:|---:|---:|---:|---:|"]
    for line in result["summary"]:
        f, b = line["float32"], line["bfloat16"]
        if f["mean"] is None or b["mean"] is None:
            continue
        rows.append(f"| {line['task']} | {f['mean']:.3f} ± {f['sd']:.3f} | {b['mean']:.3f} ± {b['sd']:.3f} | "
                    f"{line['bf16_minus_fp32_points']:+.1f} | {min(f['seeds'], b['seeds'])} | "
                    f"{f['train_seconds']:.0f} / {b['train_seconds']:.0f} |")
    if result.get("throughput"):
        t = result["throughput"]
        rows.append(f"\nSplit training throughput, bf16 / fp32 base: median {t['median_ratio']:.2f}x "
                    f"(block pairs: {', '.join(f'{r:.2f}' for r in t['ratios'])}; batch {t['batch'][0]} x "
                    f"{t['batch'][1]} tokens)")
    return "\n".join(rows)


def main() -> None:
    args = _args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    output = args.output or Path("benchmarks/results") / f"precision_{args.model}"
    output.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "records": [],
                              "platform": {"python": platform.python_version(), "torch": torch.__version__,
                                           "machine": platform.machine(), "threads": torch.get_num_threads()}}
    if args.merge and output.with_suffix(".json").is_file():
        previous = json.loads(output.with_suffix(".json").read_text())
        result["records"] = previous.get("records", [])
        result["throughput"] = previous.get("throughput")
    for path in args.include:
        have = {(r["task"], r["dtype"], r["seed"]) for r in result["records"]}
        included = json.loads(path.read_text())
        result["records"] += [r for r in included["records"]
                              if (r["task"], r["dtype"], r["seed"]) not in have]
        result["throughput"] = result.get("throughput") or included.get("throughput")
    if args.fp32_from_frontier is not None:
        result["records"] += frontier_records(args.fp32_from_frontier, args, result["records"])
    if args.blocks:
        result["throughput"] = throughput(args)
    done = {(r["task"], r["dtype"], r["seed"]) for r in result["records"]}
    _, tokenizer = load_model(args.model)
    for task in [t for t in args.tasks.split(",") if t]:
        train = load_task(task, "train", limit=args.train_examples)
        evaluation = load_task(task, "val", limit=args.eval_examples)
        encoded = [encode_example(tokenizer, e, args.max_length) for e in train]
        for seed in (int(s) for s in args.seeds.split(",")):
            for dtype in args.dtypes.split(","):
                if (task, dtype, seed) in done:
                    continue
                record = accuracy_cell(args, task, dtype, seed, encoded, evaluation, tokenizer)
                result["records"].append(record)
                log.info("%s %s seed %d: accuracy %.3f in %.0fs", task, dtype, seed, record["accuracy"],
                         record["train_seconds"])
                result["summary"] = summarise(result["records"])
                output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    result["summary"] = summarise(result["records"])
    output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    output.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
