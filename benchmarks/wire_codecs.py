"""Training quality under each wire codec: split fine-tuning of SmolLM2 on CB with the hidden states and
gradients crossing the cut in float32, bfloat16, float16 and int8-blockwise (with and without error
feedback on the gradient the client sends).

One client (head and tail) and the trunk in one process, the wire's codecs at the cut
(``splitfed.client.wire.CodecTrunk``): every tensor crossing it, both boundaries and both directions, is
encoded and decoded by the same functions, with the same checks, as over the network (what the
network adds, encryption and framing, changes no value). Every row of a seed starts from the same
adapter weights and sees the same batches; scoring also goes through the codecs (as a deployed client
would). Reported per codec: CB accuracy and eval loss and their change from float32 (paired by seed),
final training loss, and message bytes per token of each direction.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/wire_codecs.py --seeds 0 1

A row is ``FORWARD[/BACKWARD][+ef]``: ``int8-blockwise+ef`` is int8 both ways with error feedback,
``int8-blockwise/bfloat16`` int8 hidden states and bfloat16 gradients. Error feedback keeps a residual
per training example, so it acts from the second epoch on (``ef_applied`` counts the rows it reached).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from splitfed.client import SplitClient
from splitfed.client.settings import WireSettings
from splitfed.client.wire import CodecTrunk, error_feedback, wire_codecs
from splitfed.evaluation.methods import encode_task, make_collate
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.models import hidden_size as model_hidden_size
from splitfed.observability.plots import plot_loss_panels
from splitfed.server import LocalTrunk
from splitfed.tasks import evaluate_cloze, load_task_data
from splitfed.training.data import shuffled_batches
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate

ROWS = ["float32", "bfloat16", "float16", "int8-blockwise", "int8-blockwise+ef"]


def parse_row(row: str, block_size: int) -> WireSettings:
    """``FORWARD[/BACKWARD][+ef]`` as wire settings."""
    codecs, _, flag = row.partition("+")
    if flag not in ("", "ef"):
        raise argparse.ArgumentTypeError(f"row {row!r}: only '+ef' may follow the codecs")
    forward, _, backward = codecs.partition("/")
    return WireSettings(forward=forward, backward=backward or forward, block_size=block_size,
                        error_feedback=flag == "ef")


def run(row: str, seed: int, model: Any, tokenizer: Any, task: Any, encoded: list,
        args: argparse.Namespace) -> dict[str, Any]:
    """Train and score one row with one seed."""
    wire = parse_row(row, args.block_size)
    torch.manual_seed(seed)
    split = split_model(replicate(model), Partition(args.head, args.tail))
    spec = LoraSpec(r=args.lora_rank, alpha=2.0 * args.lora_rank)
    for part in split.parts.values():
        init_adapter(part, spec, seed)
    optimizer = OptimizerSettings(lr=args.lr)
    trunk = CodecTrunk(LocalTrunk(split.trunk, optimizer), *wire_codecs(wire))
    feedback = error_feedback(wire)
    client = SplitClient("client", split.head, split.tail, trunk, optimizer, feedback=feedback)
    batches = shuffled_batches(encoded, args.batch_size, seed, make_collate(tokenizer))
    started = time.perf_counter()
    losses = []
    for step in range(args.steps):
        losses.append(client.train_step(next(batches)))
        if step % 16 == 0:
            print(f"  {row} seed {seed} step {step}: loss {losses[-1]:.3f}", flush=True)
    train_s = time.perf_counter() - started
    bytes_per_token = trunk.bytes_per_token()
    metrics = evaluate_cloze(client.logits, tokenizer, task.eval, args.eval_batch_size, args.max_length)
    tail = losses[-args.final_window:]
    return {"row": row, "seed": seed, "wire": wire.model_dump(), "metrics": dict(metrics), "losses": losses,
            "final_train_loss": sum(tail) / len(tail), "bytes_per_token": bytes_per_token,
            "ef_rows": None if feedback is None else feedback.rows,
            "ef_applied": None if feedback is None else feedback.applied,
            "train_seconds": train_s, "eval_seconds": time.perf_counter() - started - train_s}


def summarize(runs: list[dict[str, Any]], rows: list[str], hidden_size: int) -> list[dict[str, Any]]:
    """Per row: means over seeds, and changes from the float32 row of the same seed."""
    base = {r["seed"]: r for r in runs if r["row"] == "float32"}
    summary = []
    for row in rows:
        mine = [r for r in runs if r["row"] == row]
        if not mine:
            continue
        entry: dict[str, Any] = {"row": row, "seeds": [r["seed"] for r in mine]}
        for key, get in (("accuracy", lambda r: r["metrics"]["accuracy"]),
                         ("eval_loss", lambda r: r["metrics"]["loss"]),
                         ("final_train_loss", lambda r: r["final_train_loss"])):
            entry[key] = statistics.fmean(get(r) for r in mine)
            paired = [get(r) - get(base[r["seed"]]) for r in mine if r["seed"] in base]
            entry[f"{key}_vs_float32"] = statistics.fmean(paired) if paired else None
        directions = mine[0]["bytes_per_token"]
        entry["bytes_per_token"] = directions
        entry["bytes_per_token_vs_float32_hidden"] = {k: v / (4 * hidden_size) for k, v in directions.items()}
        summary.append(entry)
    return summary


RUN_SETTINGS = ("model", "task", "steps", "batch_size", "lr", "lora_rank", "head", "tail", "block_size",
                "train_examples", "eval_examples", "max_length")


def saved_runs(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs saved at ``path``, refused when they were trained with other settings."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    differ = [k for k in RUN_SETTINGS if saved["settings"].get(k) != settings[k]]
    if differ:
        raise SystemExit(f"--resume: {path} was run with other settings ({', '.join(differ)}); "
                         "run without --resume to replace it")
    return [r for r in saved["runs"] if r["row"] in settings["rows"] and r["seed"] in settings["seeds"]]


def markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    lines = [f"# Wire codecs: {s['model']} on {s['task']}", "",
             f"{s['steps']} steps of batch {s['batch_size']}, LoRA r{s['lora_rank']}, lr {s['lr']}, "
             f"partition head {s['head']} / tail {s['tail']}, block size {s['block_size']}, "
             f"seeds {s['seeds']}; "
             f"{payload['eval_examples']} held-out examples. Bytes: message bytes per token (batch x "
             f"position) of the hidden states up, down, and the gradients up, down; float32 is "
             f"{4 * payload['hidden_size']} plus a few header bytes.", "",
             "| codec | accuracy | vs float32 | eval loss | vs float32 | final train loss "
             "| bytes/token fwd up/down, bwd up/down |", "|---|---:|---:|---:|---:|---:|---|"]

    def signed(value: float | None) -> str:
        return "" if value is None else f"{value:+.3f}"

    for e in payload["summary"]:
        sizes = " / ".join(f"{e['bytes_per_token'][k]:.0f}" for k in CodecTrunk.KEYS)
        lines.append(f"| {e['row']} | {e['accuracy']:.3f} | {signed(e['accuracy_vs_float32'])} "
                     f"| {e['eval_loss']:.3f} | {signed(e['eval_loss_vs_float32'])} "
                     f"| {e['final_train_loss']:.3f} | {sizes} |")
    lines += ["", "Reproduce with:", "", "```", payload["command"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--task", default="cb")
    parser.add_argument("--rows", nargs="+", default=ROWS, help="FORWARD[/BACKWARD][+ef] (default: "
                                                                "%(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=160, help="default: about 2.5 epochs of CB, so error "
                                                               "feedback has examples coming back")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--train-examples", type=int, default=250)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--final-window", type=int, default=16, help="steps the final train loss averages")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs saved with the same settings (and, unchecked, the same code: "
                             "rerun what an adapter or model change touched); run only missing pairs")
    args = parser.parse_args()
    for row in args.rows:  # refuse a bad row before loading anything
        try:
            parse_row(row, args.block_size)
        except ValueError as error:  # pydantic's ValidationError and argparse's ArgumentTypeError
            parser.error(f"row {row!r}: {error}")
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/wire_codecs.py", *sys.argv[1:]])
    model, tokenizer = load_model(args.model)
    hidden_size = model_hidden_size(model.config)
    task = load_task_data(args.task, args.train_examples, args.eval_examples)
    encoded = encode_task(task, tokenizer, args.max_length)
    stem = args.output / f"wire_codecs_{args.model}_{args.task}"
    payload: dict[str, Any] = {"settings": vars(args) | {"output": str(args.output)}, "command": command,
                               "platform": {"python": platform.python_version(), "torch": torch.__version__,
                                            "threads": torch.get_num_threads()},
                               "hidden_size": hidden_size, "train_examples": len(task.train),
                               "eval_examples": len(task.eval), "runs": [], "summary": []}
    if args.resume:
        payload["runs"] = saved_runs(stem.with_suffix(".json"), payload["settings"])
    stem.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for row in args.rows:
            if any(r["row"] == row and r["seed"] == seed for r in payload["runs"]):
                print(f"{row}, seed {seed}: saved, kept", flush=True)
                continue
            print(f"{row}, seed {seed} ...", flush=True)
            result = run(row, seed, model, tokenizer, task, encoded, args)
            print(f"{row}, seed {seed}: {result['metrics']}; bytes/token {result['bytes_per_token']}",
                  flush=True)
            payload["runs"].append(result)
            payload["summary"] = summarize(payload["runs"], args.rows, hidden_size)
            stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))  # saved after every run
            stem.with_suffix(".md").write_text(markdown(payload))
    panels = {f"seed {seed}": {r["row"]: r["losses"] for r in payload["runs"] if r["seed"] == seed}
              for seed in args.seeds}
    plot_loss_panels(panels, f"{args.model} on {args.task}: training loss per wire codec",
                     stem.with_suffix(".png"), smooth=True, dashed=frozenset({"float32"}))
    print(markdown(payload))
    print(f"saved {stem}.json / .md / .png")


if __name__ == "__main__":
    main()
