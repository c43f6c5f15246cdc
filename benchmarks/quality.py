"""Federated split fine-tuning vs centralized, on real tasks: the papers' main table.

Runs ``splitfed eval`` per task (zero-shot, centralized, split with 1 client, federated with N
clients IID and Dirichlet non-IID, and federated + noise with --noise-clip/--noise-sigma and
--noise-backward-clip), with the same seeds, steps and hyper-parameters, and saves JSON, a Markdown
table and a PNG of the loss curves. ``--zero-shot-only`` instead scores the base model on every
shipped classification task.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/quality.py --task cb --task copa --task xsum \\
        --steps 48 --eval-examples 100
    .venv/bin/python benchmarks/quality.py --zero-shot-only --eval-examples 100
    .venv/bin/python benchmarks/quality.py --merge A.json B.json --output benchmarks/results/main

``--merge`` puts the tasks of several runs into one table (each run's settings are kept in the JSON;
the table notes where steps or sizes differ between tasks).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from splitfed.evaluation import EvalSettings, markdown_report, plot_losses, run_eval
from splitfed.evaluation.run import EvalResult
from splitfed.evaluation.settings import METHODS
from splitfed.privacy import PrivacySettings
from splitfed.tasks import TASKS


def _described(field: str) -> str:
    """An option's help: the description of the evaluation setting it sets."""
    return str(EvalSettings.model_fields[field].description)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help=_described("model"))
    parser.add_argument("--task", action="append", help="task (repeatable; default cb, copa, xsum)")
    parser.add_argument("--method", action="append", choices=METHODS,
                        help="method (repeatable; default all; federated-noise needs --noise-clip and "
                             "--noise-sigma)")
    parser.add_argument("--zero-shot-only", action="store_true",
                        help="score the base model on every shipped classification task")
    parser.add_argument("--steps", type=int, default=48, help=_described("steps"))
    parser.add_argument("--rounds", type=int, default=4, help=_described("rounds"))
    parser.add_argument("--clients", type=int, default=3, help=_described("clients"))
    parser.add_argument("--batch-size", type=int, default=4, help=_described("batch_size"))
    parser.add_argument("--lr", type=float, default=1e-3, help=_described("lr"))
    parser.add_argument("--lora-rank", type=int, default=8, help=_described("lora_rank"))
    parser.add_argument("--train-examples", type=int, default=480, help=_described("train_examples"))
    parser.add_argument("--eval-examples", type=int, default=100, help=_described("eval_examples"))
    parser.add_argument("--max-new-tokens", type=int, default=48, help=_described("max_new_tokens"))
    parser.add_argument("--max-words", type=int, default=200, help=_described("max_words"))
    parser.add_argument("--max-length", type=int, default=320, help=_described("max_length"))
    parser.add_argument("--seed", type=int, default=0, help=_described("seed"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"),
                        help="folder of the JSON, Markdown and plot")
    parser.add_argument("--noise-clip", type=float, default=None,
                        help="federated + noise row: per-token clip norm C of both channels")
    parser.add_argument("--noise-sigma", type=float, default=None,
                        help="federated + noise row: noise multiplier sigma of both channels")
    parser.add_argument("--noise-backward-clip", type=float, default=None,
                        help="federated + noise row: clip norm of the upstream gradient, when it differs "
                             "from --noise-clip (gradients are orders of magnitude smaller than hidden "
                             "states; privacy_utility.py saves both public medians)")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge these JSON results into --output "
                        "(a file stem) instead of running")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.output)
        return

    console = Console()
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/quality.py", *sys.argv[1:]])
    common = dict(model=args.model, steps=args.steps, rounds=args.rounds, clients=args.clients,
                  batch_size=args.batch_size, lr=args.lr, lora_rank=args.lora_rank,
                  train_examples=args.train_examples, eval_examples=args.eval_examples,
                  max_new_tokens=args.max_new_tokens, max_words=args.max_words,
                  max_length=args.max_length, seed=args.seed)
    if args.noise_clip is not None and args.noise_sigma is not None:
        channel = {"clip": args.noise_clip, "sigma": args.noise_sigma}
        backward = {"clip": args.noise_backward_clip or args.noise_clip, "sigma": args.noise_sigma}
        common["privacy"] = PrivacySettings(forward=channel, backward=backward, seed=args.seed)
    if args.zero_shot_only:
        settings = EvalSettings(tasks=list(args.task or TASKS), methods=["zero-shot"], **common)
        name = f"quality_zeroshot_{args.model}"
    else:
        methods = {"methods": list(args.method)} if args.method else {}
        settings = EvalSettings(tasks=list(args.task or ["cb", "copa", "xsum"]), **methods, **common)
        name = f"quality_{args.model}_" + "-".join(str(t) for t in settings.tasks)
    result: EvalResult | None = None
    for task in settings.tasks:  # one task at a time, saved after each, so a late failure keeps the rest
        part = run_eval(settings.model_copy(update={"tasks": [task]}), console)
        if result is None:
            result = part
            result.settings = json.loads(settings.model_dump_json())
        else:
            result.tasks.update(part.tasks)
            result.results.extend(part.results)
            result.total_seconds += part.total_seconds
        save(result, args.output / name, command, plot=not args.zero_shot_only)


def merge(paths: list[Path], stem: Path) -> None:
    """One table from several runs: tasks side by side; every run's settings and command kept."""
    from splitfed.evaluation.run import load_result

    runs = [load_result(path) for path in paths]
    commands = [json.loads(path.read_text()).get("command", "") for path in paths]
    result = runs[0]
    for run in runs[1:]:
        result.tasks.update(run.tasks)
        result.results.extend(run.results)
        result.total_seconds += run.total_seconds
    per_task = {}
    for run, path in zip(runs, paths, strict=True):
        for task in run.tasks:  # a task's first run (a later one may add rows, e.g. the noise row)
            per_task.setdefault(task, {"from": str(path), **{k: run.settings[k] for k in
                                ("steps", "rounds", "clients", "batch_size", "lr", "lora_rank",
                                 "eval_examples", "max_new_tokens", "max_words", "max_length")}})
    result.settings = {**result.settings, "per_task": per_task}
    privacy = [run.settings["privacy"] for run in runs if run.settings.get("privacy")]
    if privacy:  # the federated + noise row's label names its defense
        result.settings["privacy"] = privacy[0]
    note = "\n".join(f"- {task}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k != "from")
                     for task, s in per_task.items())
    save(result, stem, "\n".join(commands), plot=True, note=f"\nSettings per task:\n\n{note}\n")


def save(result: EvalResult, stem: Path, command: str, plot: bool, note: str = "") -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    payload = asdict(result)
    payload["command"] = command
    from splitfed.evaluation import target_check

    payload["target_check"] = target_check(result)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    report = markdown_report(result, command) + note
    stem.with_suffix(".md").write_text(report)
    if plot:
        plot_losses(result, stem.with_suffix(".png"))
    Console().print(report)
    print(f"saved {stem}.json / .md" + (" / .png" if plot else "") + f"; total {result.total_seconds:.0f}s")


if __name__ == "__main__":
    main()
