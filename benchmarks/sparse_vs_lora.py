"""LoRA alone vs LoRA + sparse fine-tuning (our reading of SPF) at the same number of trainable
parameters, on a real task (SmolLM2-135M-Instruct on SuperGLUE CB by default).

Every row trains the whole model (the split computes the same; tests/models/test_sparse.py) from the
same seed, data order, steps and batch size, and is scored on the held-out set. The sparse rows use
LoRA at half the rank and spend the other half of the budget on base-weight entries chosen by Fisher
information (or gradient magnitude) on a few local training batches.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sparse_vs_lora.py --steps 48
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from splitfed.evaluation.methods import encode_task, make_collate
from splitfed.models import LoraSpec, SparseSpec, load_model, select_and_add_sparse, sparse_parameter_count
from splitfed.models.sparse import sparse_targets
from splitfed.models.whole import WholeModel
from splitfed.tasks import evaluate_cloze, load_task_data
from splitfed.training.data import shuffled_batches
from splitfed.training.loss import causal_lm_loss
from splitfed.training.replicate import replicate


def lora_count(whole: WholeModel) -> int:
    return sum(p.numel() for n, p in whole.named_parameters() if p.requires_grad and ".lora_" in n)


def run(name: str, rank: int, sparse: str | None, model: Any, tokenizer: Any, task: Any, encoded: list,
        args: argparse.Namespace, budget: int | None) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    whole = WholeModel(replicate(model), LoraSpec(r=rank, alpha=2.0 * rank))
    collate = make_collate(tokenizer)
    started = time.perf_counter()
    selection_s = 0.0
    if sparse is not None:
        targets = sparse_targets(whole, SparseSpec())
        total = sum(m.weight.numel() for m in targets.values())
        density = (budget - lora_count(whole)) / total
        spec = SparseSpec(density=density, criterion=sparse, selection_batches=args.selection_batches)
        probe = shuffled_batches(encoded, args.batch_size, args.seed + 1000, collate)
        batches = [next(probe) for _ in range(spec.selection_batches)]
        losses = [(lambda b=b: causal_lm_loss(whole(b["input_ids"], b["attention_mask"]), b["labels"]))
                  for b in batches]
        whole.train()
        select_and_add_sparse(whole, spec, losses)
        selection_s = time.perf_counter() - started
    lora = [p for n, p in whole.named_parameters() if p.requires_grad and ".lora_" in n]
    deltas = [p for n, p in whole.named_parameters() if p.requires_grad and "sparse_delta" in n]
    groups = [{"params": lora, "lr": args.lr}]
    if deltas:
        groups.append({"params": deltas, "lr": args.sparse_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    data = shuffled_batches(encoded, args.batch_size, args.seed, collate)
    losses_seen = []
    for step in range(args.steps):
        batch = next(data)
        whole.train()
        loss = causal_lm_loss(whole(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses_seen.append(float(loss.detach()))
        if step % 8 == 0:
            print(f"  {name} step {step}: loss {losses_seen[-1]:.3f}", flush=True)
    train_s = time.perf_counter() - started

    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        whole.eval()
        with torch.no_grad():
            return whole(input_ids, attention_mask)

    metrics = evaluate_cloze(logits, tokenizer, task.eval, args.eval_batch_size, args.max_length)
    return {"method": name, "lora_rank": rank, "criterion": sparse,
            "lora_params": sum(p.numel() for p in lora),
            "sparse_params": sparse_parameter_count(whole),
            "trainable_params": sum(p.numel() for p in lora) + sum(p.numel() for p in deltas),
            "metrics": dict(metrics), "losses": losses_seen, "selection_seconds": selection_s,
            "train_seconds": train_s, "eval_seconds": time.perf_counter() - started - train_s}


def markdown(payload: dict[str, Any]) -> str:
    settings = payload["settings"]
    lines = [f"# LoRA vs LoRA + sparse fine-tuning: {settings['model']} on {settings['task']}", "",
             f"{settings['steps']} steps of batch {settings['batch_size']}, LoRA lr {settings['lr']}, sparse "
             f"lr {settings['sparse_lr']}, seed {settings['seed']}; {payload['eval_examples']} held-out "
             f"examples; {payload['train_examples']} training examples.", "",
             "| method | trainable params (LoRA + sparse) | accuracy | macro-F1 | eval loss "
             "| train loss (last 8 steps) | train s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in payload["rows"]:
        m = row["metrics"]
        tail = sum(row["losses"][-8:]) / len(row["losses"][-8:])
        lines.append(f"| {row['method']} | {row['trainable_params']:,} ({row['lora_params']:,} + "
                     f"{row['sparse_params']:,}) | {m['accuracy']:.3f} | {m['macro_f1']:.3f} "
                     f"| {m['loss']:.3f} | {tail:.3f} | {row['train_seconds']:.0f} |")
    lines += ["", f"One seed, {payload['eval_examples']} held-out examples: on so few, a few points of "
              "accuracy are within noise.", "",
              "Reproduce with:", "", "```", payload["command"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--task", default="cb")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sparse-lr", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=8, help="LoRA-only rank; the sparse rows use rank/2")
    parser.add_argument("--selection-batches", type=int, default=4)
    parser.add_argument("--criteria", nargs="+", default=["fisher", "gradient"])
    parser.add_argument("--no-half-rank", action="store_true", help="skip the LoRA rank/2 row (half budget)")
    parser.add_argument("--train-examples", type=int, default=250)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/sparse_vs_lora.py", *sys.argv[1:]])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = load_model(args.model)
    task = load_task_data(args.task, args.train_examples, args.eval_examples)
    encoded = encode_task(task, tokenizer, args.max_length)
    stem = args.output / f"sparse_vs_lora_{args.model}_{args.task}"
    payload: dict[str, Any] = {"settings": vars(args) | {"output": str(args.output)}, "command": command,
                               "platform": {"python": platform.python_version(), "torch": torch.__version__,
                                            "threads": torch.get_num_threads()},
                               "train_examples": len(task.train), "eval_examples": len(task.eval), "rows": []}
    budget = None
    plan = [(f"LoRA r{args.rank}", args.rank, None)] + [
        (f"LoRA r{args.rank // 2} + sparse ({c})", args.rank // 2, c) for c in args.criteria]
    if not args.no_half_rank:
        plan.append((f"LoRA r{args.rank // 2} (half the budget)", args.rank // 2, None))
    for name, rank, criterion in plan:
        print(f"{name} ...", flush=True)
        row = run(name, rank, criterion, model, tokenizer, task, encoded, args, budget)
        budget = budget or row["trainable_params"]
        payload["rows"].append(row)
        print(f"{name}: {row['metrics']}", flush=True)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
        stem.with_suffix(".md").write_text(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
