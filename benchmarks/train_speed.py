"""Split training speed against centralized training of the same model, in one run.

For each repetition the same batches are trained by (a) the unsplit model with LoRA on every block
and (b) head -> trunk -> tail with the trunk behind the in-process ``TrunkEndpoint``; the ratio of
their throughputs is the cost of splitting itself, without a network. Prints and saves JSON.

    .venv/bin/python benchmarks/train_speed.py --model smollm2 --steps 8 --batch-size 4 --length 128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from splitfed.federation import CentralizedTrainer, FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import LoraSpec, load_model
from splitfed.tasks import collate


def _rows(count: int, length: int, vocab: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        ids = torch.randint(10, vocab, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per trainer and repetition")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/train_speed.json"))
    args = parser.parse_args()

    model, _ = load_model(args.model)
    rows = _rows(args.batch_size * (args.steps + args.warmup), args.length, model.config.vocab_size, 0)
    settings = FederationSettings(clients=1, rounds=1, local_steps=1, batch_size=args.batch_size,
                                  partition=PartitionSettings(head=args.head, tail=args.tail),
                                  adapter=LoraSpec(r=8, alpha=16))

    def collate_rows(batch: list[dict]) -> dict:
        return collate(batch, pad_token_id=0)

    split_times: list[float] = []
    central_times: list[float] = []
    for _ in range(args.repeats):
        federation = InProcessFederation(model, [rows], collate_rows, settings)
        central = CentralizedTrainer(model, rows, collate_rows, settings, federation.initial_states())
        client = federation.clients[0]
        batches = [collate_rows(rows[i:i + args.batch_size]) for i in range(0, len(rows), args.batch_size)]
        for index, batch in enumerate(batches):
            started = time.perf_counter()
            central.train_step()
            if index >= args.warmup:
                central_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            client.train_step(batch)
            if index >= args.warmup:
                split_times.append(time.perf_counter() - started)

    tokens = args.batch_size * args.length
    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "length": args.length,
        "partition": [args.head, args.tail],
        "steps_timed": len(split_times),
        "centralized_s_per_step": statistics.median(central_times),
        "split_s_per_step": statistics.median(split_times),
        "centralized_tokens_per_s": tokens / statistics.median(central_times),
        "split_tokens_per_s": tokens / statistics.median(split_times),
        # throughput ratio (as in network_speed.py): above 1 means split is faster
        "split_over_centralized": statistics.median(central_times) / statistics.median(split_times),
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
