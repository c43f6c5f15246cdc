"""Privacy-utility experiment: attack success, epsilon and task accuracy for each head depth and sigma.

For every head depth and noise multiplier sigma (0 = no defense at all), in one run:

* fine-tune the split model federated (in process, 3 clients, FedAvg, the demo's CB budget) with the
  client-side defense: per-token clip of the head's output to the public text's median token norm,
  and of the upstream gradient to the public gradients' median, noise N(0, sigma^2 C^2) on both;
* score the fine-tuned model on the task (CB validation), the hidden states of inference noised too;
* attack that victim (its fine-tuned head/tail, the server's trunk) as the server: nearest-neighbour
  (cosine, L2), learned inverters (noise-aware at sigma; mixed levels), direct forward, learned
  gradient inverter, trained on public wikitext-2 with the public weights only;
* epsilon at delta=1e-5 from opacus' RDP accountant: example-level (the guarantee; one release of
  an n-token example has L2 sensitivity 2 C sqrt(n)) and token-level (sensitivity 2 C; a valid
  guarantee only at head=0), each step counted as a release of every example (no amplification).

Saves JSON (after every configuration), a Markdown table and a PNG.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/privacy_utility.py --heads 1,2,4 --sigmas 0,0.5,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from splitfed.attacks import AttackHarness, AttackSettings, ChannelDefense, load_victim_rows
from splitfed.federation import FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import LoraSpec, Partition, load_model, whole_logits
from splitfed.privacy import ChannelSettings, PrivacySettings, epsilon_of
from splitfed.tasks import collate, encode_example, evaluate_cloze, load_task
from splitfed.training.data import iid_shards
from splitfed.training.optim import OptimizerSettings

log = logging.getLogger("privacy_utility")
ATTACK_NAMES = ("nn-cosine", "nn-l2", "learned", "learned-mixed", "direct", "gradient")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--task", default="cb")
    parser.add_argument("--heads", default="1,2,4")
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--sigmas", default="0,0.05,0.2")
    parser.add_argument("--grid", default=None, help="per-head sigmas, e.g. '2:0,0.05,0.2;1:0,0.2' "
                                                     "(overrides --heads/--sigmas)")
    parser.add_argument("--mixed-sigmas", default="0,0.05,0.1,0.2", help="levels of the mixed inverter")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=4, help="steps per client per round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-examples", type=int, default=480)
    parser.add_argument("--eval-examples", type=int, default=120)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--victims", type=int, default=24)
    parser.add_argument("--inverter-steps", type=int, default=200)
    parser.add_argument("--public-tokens", type=int, default=8192)
    parser.add_argument("--gradient-public-tokens", type=int, default=4096)
    parser.add_argument("--zero-shot", action="store_true", help="also score the untuned model")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args()


def _federation(model, shards, pad, args, head: int, privacy: PrivacySettings) -> InProcessFederation:
    settings = FederationSettings(
        clients=args.clients, rounds=args.rounds, local_steps=args.local_steps, batch_size=args.batch_size,
        seed=args.seed, partition=PartitionSettings(head=head, tail=args.tail),
        adapter=LoraSpec(r=8, alpha=16.0), optimizer=OptimizerSettings(lr=args.lr), privacy=privacy)
    return InProcessFederation(model, shards, lambda rows: collate(rows, pad_token_id=pad), settings)


def _epsilons(federation: InProcessFederation, sigma: float, delta: float) -> dict:
    reports = federation.privacy_reports()
    if not reports:
        return {"example": math.inf, "token": math.inf, "releases": 0}
    releases = max(r["releases"] for r in reports)
    example = max(float(r["epsilon"]) for r in reports)
    return {"example": example, "token": epsilon_of([(sigma / 2.0, releases)], delta), "releases": releases}


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if x < 1e4 else f"{x:.2e}"


def markdown(records: list[dict]) -> str:
    head = ("| head | sigma | eps (example) | eps (token) | CB acc | " +
            " | ".join(f"{a} tok/R-L" for a in ATTACK_NAMES) + " |")
    lines = [head, "|" + "---|" * (5 + len(ATTACK_NAMES))]
    for r in records:
        epsilon = r["epsilon"]
        cells = [str(r["head"]), f"{r['sigma']:g}", _fmt(epsilon["example"]), _fmt(epsilon["token"]),
                 f"{r['accuracy']:.3f}"]
        for name in ATTACK_NAMES:
            m = r["attacks"].get(name)
            cells.append("-" if m is None else f"{m['token_accuracy']:.2f} / {m['rouge_l']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = sorted({r["head"] for r in records})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for head in heads:
        rows = sorted((r for r in records if r["head"] == head), key=lambda r: r["sigma"])
        sigmas = [r["sigma"] for r in rows]
        axes[0].plot(sigmas, [r["attacks"]["learned"]["rouge_l"] for r in rows], "o-", label=f"head={head}")
        axes[1].plot(sigmas, [r["accuracy"] for r in rows], "o-", label=f"head={head}")
        axes[2].plot([r["attacks"]["learned"]["rouge_l"] for r in rows], [r["accuracy"] for r in rows], "o-",
                     label=f"head={head}")
        for r in rows:
            axes[2].annotate(f"σ={r['sigma']:g}", (r["attacks"]["learned"]["rouge_l"], r["accuracy"]),
                             fontsize=7)
    axes[0].axhline(0.2, color="grey", ls="--", lw=0.8)
    axes[0].set(xlabel="noise multiplier σ", ylabel="ROUGE-L F1", title="noise-aware learned inverter")
    axes[1].set(xlabel="noise multiplier σ", ylabel="accuracy", title="CB accuracy after fine-tuning")
    axes[2].axvline(0.2, color="grey", ls="--", lw=0.8)
    axes[2].set(xlabel="inverter ROUGE-L F1 (lower = more private)", ylabel="CB accuracy",
                title="privacy-utility")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    args = _args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    output = args.output or Path("benchmarks/results") / f"privacy_utility_{args.model}"
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    pad = int(tokenizer.pad_token_id)
    train = load_task(args.task, "train", limit=args.train_examples)
    evaluation = load_task(args.task, "val", limit=args.eval_examples)
    encoded = [encode_example(tokenizer, e, args.max_length) for e in train]
    shards = iid_shards(encoded, args.clients, args.seed)
    if args.grid:
        grid = [(int(h), [float(x) for x in xs.split(",")])
                for h, xs in (part.split(":") for part in args.grid.split(";"))]
    else:
        grid = [(int(h), [float(x) for x in args.sigmas.split(",")]) for h in args.heads.split(",")]
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "platform": {"python": platform.python_version(), "torch": torch.__version__,
                           "machine": platform.machine(), "threads": torch.get_num_threads()},
              "train_examples": len(train), "eval_examples": len(evaluation), "records": []}
    if args.zero_shot:
        result["zero_shot"] = evaluate_cloze(whole_logits(model), tokenizer, evaluation, batch_size=8,
                                             max_length=args.max_length)
        log.info("zero-shot accuracy %.3f", result["zero_shot"]["accuracy"])
    for head, sigmas in grid:
        attack_settings = AttackSettings(model=args.model, head=head, tail=args.tail, task=args.task,
                                         victims=args.victims, public_tokens=args.public_tokens,
                                         gradient_public_tokens=args.gradient_public_tokens,
                                         mixed_sigmas=[float(x) for x in args.mixed_sigmas.split(",")],
                                         seed=args.seed,
                                         inverter={"steps": args.inverter_steps})
        harness = AttackHarness(model, tokenizer, Partition(head, args.tail), attack_settings)
        rows = load_victim_rows(attack_settings, tokenizer)
        f_clip, b_clip = harness.forward_median, harness.backward_median
        for sigma in sigmas:
            t0 = time.perf_counter()
            if sigma == 0:
                privacy = PrivacySettings()
                defense = {"forward": ChannelDefense(), "backward": ChannelDefense()}
            else:
                privacy = PrivacySettings(forward=ChannelSettings(clip=f_clip, sigma=sigma),
                                          backward=ChannelSettings(clip=b_clip, sigma=sigma),
                                          delta=args.delta, seed=args.seed)
                defense = {"forward": ChannelDefense(clip=f_clip, sigma=sigma),
                           "backward": ChannelDefense(clip=b_clip, sigma=sigma)}
            federation = _federation(model, shards, pad, args, head, privacy)
            losses: list[float] = []
            for _ in range(args.rounds):
                losses += federation.train_round()
            train_seconds = time.perf_counter() - t0
            metrics = evaluate_cloze(federation.logits, tokenizer, evaluation, batch_size=8,
                                     max_length=args.max_length)
            victim = SimpleNamespace(head=federation.clients[0].head, trunk=federation.server.trunk,
                                     tail=federation.clients[0].tail)
            harness.settings = attack_settings.model_copy(update=defense)
            attacked = harness.evaluate(victim, rows)
            record = {"head": head, "tail": args.tail, "sigma": sigma, "forward_clip": f_clip,
                      "backward_clip": b_clip, "epsilon": _epsilons(federation, sigma, args.delta),
                      "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                      "eval_loss": metrics["loss"], "train_losses": losses, "attacks": attacked["attacks"],
                      "train_seconds": train_seconds, "seconds": time.perf_counter() - t0}
            result["records"].append(record)
            log.info("head %d sigma %g: acc %.3f, eps(example) %s, learned R-L %.3f, %.0fs", head, sigma,
                     record["accuracy"], _fmt(record["epsilon"]["example"]),
                     record["attacks"]["learned"]["rouge_l"], record["seconds"])
            result["seconds"] = time.perf_counter() - started
            output.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
            output.with_suffix(".md").write_text(markdown(result["records"]))
            plot(result["records"], output.with_suffix(".png"))
    print(markdown(result["records"]))
    print(f"saved {output}.json/.md/.png in {result['seconds']:.0f}s")


if __name__ == "__main__":
    main()
