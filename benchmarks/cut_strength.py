"""Cut strength sweep: what a learned defense leaves the trunk against what it leaves an inverter.

For each defense setting, on public text only (no task, no federation; minutes per setting where a
frontier cell takes half an hour):

* warm the cut up as a client does (its own copy of the public model, ``--warmup-steps`` steps);
* utility proxy: next-token loss on held-out public text through head, cut (sampled), trunk and tail,
  against the same without the cut;
* privacy proxy: a noise-aware inverter trained on the cut's own output (its trained weights, fresh
  samples every batch) for public text, scored on held-out public text: token accuracy. It sees the
  victim's cut, which the server never does, so it bounds every attack that learns from public text;
* with ``--adapt-steps N``: the trunk and the tail then get LoRA and train N steps on the cut's sampled
  output (the cut frozen), as federated training would let them learn to work on the defended code;
  the LM loss is measured again, against the no-defense model adapted the same way.

Rows: ``vib:KL[:SCALE]`` (bottleneck, KL weight per code dimension, initial scale, default 1),
``dcor:W`` (distance correlation). Saves JSON and a PNG (x: inverter accuracy, y: LM loss).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cut_strength.py --rows vib:0,vib:30,vib:300,vib:3000
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from splitfed.attacks.inverter import train_inverter
from splitfed.attacks.observe import head_outputs
from splitfed.models import LoraSpec, Partition, add_adapter, load_model, split_model, token_embedding_matrix
from splitfed.privacy import BottleneckSettings, DistanceCorrelationSettings, LearnedCut, warm_up
from splitfed.tasks.public_text import public_chunks
from splitfed.training.loss import causal_lm_loss

log = logging.getLogger("cut_strength")


def row_settings(row: str, args: argparse.Namespace) -> BottleneckSettings | DistanceCorrelationSettings:
    """The learned defense of a row such as ``vib:300`` or ``vib:300:0.5`` or ``dcor:10``."""
    kind, _, value = row.partition(":")
    strength, _, scale = value.partition(":")
    common = {"warmup_steps": args.warmup_steps, "warmup_batch_size": args.warmup_batch_size,
              "warmup_lr": args.warmup_lr}
    try:
        if kind == "vib":
            return BottleneckSettings(kl_weight=float(strength), initial_scale=float(scale or 1.0), **common)
        if kind == "dcor" and not scale:
            return DistanceCorrelationSettings(weight=float(strength), **common)
    except ValueError as error:
        raise ValueError(f"row {row!r}: {error}") from None
    raise ValueError(f"unknown row {row!r}: vib:KL[:SCALE] or dcor:W")


def adapted_lm_loss(args: argparse.Namespace, split, public: dict[str, torch.Tensor], send) -> float:
    """LM loss on held-out public text after LoRA on copies of the trunk and tail trained
    ``--adapt-steps`` on ``send(head output)`` of the public training text."""
    split = SimpleNamespace(trunk=copy.deepcopy(split.trunk), tail=copy.deepcopy(split.tail))
    for part in (split.trunk, split.tail):
        add_adapter(part, LoraSpec(r=args.adapt_rank))
        part.train()
    params = [p for part in (split.trunk, split.tail) for p in part.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.adapt_lr)
    generator = torch.Generator().manual_seed(args.seed)
    hidden, ids, mask = public["train_hidden"], public["train_ids"], public["train_mask"]
    for _ in range(args.adapt_steps):
        rows = torch.randint(ids.shape[0], (args.warmup_batch_size,), generator=generator)
        logits = split.tail(split.trunk(send(hidden[rows]), mask[rows]), mask[rows])
        loss = causal_lm_loss(logits, ids[rows].masked_fill(mask[rows] == 0, -100))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for part in (split.trunk, split.tail):
        part.eval()
    return lm_loss(split, public["test_hidden"], public["test_ids"], public["test_mask"], send)


@torch.no_grad()
def lm_loss(split, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, send) -> float:
    logits = split.tail(split.trunk(send(hidden), mask), mask)
    return float(causal_lm_loss(logits, ids.masked_fill(mask == 0, -100)))


def measure(row: str, split, embeddings: torch.Tensor, public: dict[str, torch.Tensor],
            args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    settings = row_settings(row, args)
    cut = LearnedCut(settings, int(embeddings.shape[1]), seed=args.seed)
    losses = warm_up(cut, split.head, split.trunk, split.tail, public["train_ids"], public["train_mask"],
                     seed=args.seed)

    def send(hidden: torch.Tensor) -> torch.Tensor:
        return cut.send(hidden, None, training=True, with_loss=False)[0].detach()

    keep = public["train_mask"].bool()
    inverter = train_inverter(public["train_hidden"][keep], public["train_ids"][keep], embeddings,
                              lambda x, _generator: send(x), steps=args.inverter_steps, seed=args.seed)
    test_keep = public["test_mask"].bool()
    predicted = inverter.predict(send(public["test_hidden"])[test_keep])
    accuracy = float((predicted == public["test_ids"][test_keep]).float().mean())
    record = {"row": row, "settings": settings.model_dump(mode="json"),
              "warmup_lm_loss_first": losses[0] if losses else None,
              "warmup_lm_loss_last": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
              "lm_loss": lm_loss(split, public["test_hidden"], public["test_ids"], public["test_mask"], send),
              "inverter_token_accuracy": accuracy, "seconds": time.perf_counter() - started}
    if args.adapt_steps:
        record["lm_loss_adapted"] = adapted_lm_loss(args, split, public, send)
        record["seconds"] = time.perf_counter() - started
    if cut.transform.log_scale is not None:
        record["mean_scale"] = float(cut.transform.log_scale.bias.detach().exp().mean())
    adapted = f", {record['lm_loss_adapted']:.3f} with trunk and tail adapted" if args.adapt_steps else ""
    log.info("%s: LM loss %.3f%s, white-box inverter token accuracy %.3f (%.0fs)", row, record["lm_loss"],
             adapted, accuracy, record["seconds"])
    return record


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for kind, marker in (("vib", "o"), ("dcor", "s")):
        points = [r for r in result["rows"] if r["row"].startswith(kind)]
        if points:
            axis.scatter([r["inverter_token_accuracy"] for r in points], [r["lm_loss"] for r in points],
                         marker=marker, label={"vib": "bottleneck", "dcor": "distance correlation"}[kind])
            for r in points:
                axis.annotate(r["row"], (r["inverter_token_accuracy"], r["lm_loss"]), fontsize=7,
                              xytext=(4, 3), textcoords="offset points")
    axis.axhline(result["clean_lm_loss"], color="black", linestyle="--", linewidth=1, label="no defense")
    axis.set(xlabel="white-box inverter token accuracy (held-out public text)",
             ylabel="next-token loss through the cut",
             title=f"{result['model']}, head {result['head']}: cut strength")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rows", default="vib:0,vib:30,vib:300,vib:3000,dcor:1,dcor:100")
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--warmup-steps", type=int, default=60)
    parser.add_argument("--warmup-batch-size", type=int, default=4)
    parser.add_argument("--warmup-lr", type=float, default=1e-3)
    parser.add_argument("--inverter-steps", type=int, default=200)
    parser.add_argument("--public-tokens", type=int, default=24576, help="3/4 train the cut and the "
                        "inverter, 1/4 score them")
    parser.add_argument("--adapt-steps", type=int, default=0, help="then train LoRA on the trunk and tail "
                        "this many steps on the cut's output and measure the LM loss again (0 = off)")
    parser.add_argument("--adapt-rank", type=int, default=8)
    parser.add_argument("--adapt-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    for row in rows:
        try:
            row_settings(row, args)
        except ValueError as error:
            parser.error(str(error))
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    split = split_model(model, Partition(args.head, args.tail))
    embeddings = token_embedding_matrix(model).detach().float()
    chunks = public_chunks(tokenizer, tokens=args.public_tokens, length=64)
    cut_at = chunks["input_ids"].shape[0] * 3 // 4
    public = {"train_ids": chunks["input_ids"][:cut_at], "train_mask": chunks["attention_mask"][:cut_at],
              "test_ids": chunks["input_ids"][cut_at:], "test_mask": chunks["attention_mask"][cut_at:]}
    for part in ("train", "test"):
        public[f"{part}_hidden"] = head_outputs(split.head, public[f"{part}_ids"], public[f"{part}_mask"])
    clean = lm_loss(split, public["test_hidden"], public["test_ids"], public["test_mask"], lambda h: h)
    log.info("no defense: LM loss %.3f on %d held-out public tokens", clean, int(public["test_mask"].sum()))
    clean_adapted = adapted_lm_loss(args, split, public, lambda h: h) if args.adapt_steps else None
    if clean_adapted is not None:
        log.info("no defense, trunk and tail adapted %d steps: LM loss %.3f", args.adapt_steps, clean_adapted)
    output = args.output or Path("benchmarks/results") / f"cut_strength_{args.model}"
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result: dict[str, Any] = {"model": args.model, "head": args.head, "tail": args.tail, "args": settings,
                              "clean_lm_loss": clean, "clean_lm_loss_adapted": clean_adapted, "rows": [],
                              "platform": {"python": platform.python_version(), "torch": torch.__version__,
                                           "threads": torch.get_num_threads()}}
    for row in rows:
        result["rows"].append(measure(row, split, embeddings, public, args))
        output.with_suffix(".json").write_text(json.dumps(result, indent=2))
        plot(result, output.with_suffix(".png"))
    for record in result["rows"]:
        adapted = "" if clean_adapted is None else \
            f", adapted {record['lm_loss_adapted']:.3f} (no defense {clean_adapted:.3f})"
        print(f"{record['row']:>12}  LM loss {record['lm_loss']:.3f} (no defense {clean:.3f}){adapted}  "
              f"white-box inverter {record['inverter_token_accuracy']:.3f}")
    print(f"saved {output}.json and .png")


if __name__ == "__main__":
    main()
