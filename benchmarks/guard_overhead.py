"""What the trunk's guards cost the honest path: split training steps with and without them, in one run.

Guarded: every backward's gradient goes through ``GradientGuard.check`` (finite, size against the median)
and the trunk adapter steps through ``guarded_step`` (gradients checked, parameters and AdamW state
snapshotted, checked after the step). Unguarded: the same steps with a plain ``optimizer.step()`` and no
check, as before issue 40. The two alternate in ``--blocks`` blocks on the same batches (this machine's
speed drifts); the ratio of each block pair and their median are reported. Prints and saves JSON.

    .venv/bin/python benchmarks/guard_overhead.py --model smollm2 --blocks 5 --block-steps 6
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import splitfed.server.local_trunk as local_trunk
from splitfed.client import SplitClient
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.server import LocalTrunk
from splitfed.server.gradient_guard import GradientGuard, GradientGuardSettings
from splitfed.training.guarded_step import guarded_step
from splitfed.training.replicate import replicate


def _plain_step(optimizer: torch.optim.Optimizer, what: str = "") -> bool:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True


class _Checked:
    """The trunk endpoint with the service's gradient check in front of its backward."""

    def __init__(self, trunk: LocalTrunk) -> None:
        self.trunk, self.guard = trunk, GradientGuard(GradientGuardSettings())

    def forward(self, client_id, hidden, attention_mask, train=True, labelled_tokens=0):
        return self.trunk.forward(client_id, hidden, attention_mask, train, labelled_tokens)

    def backward(self, client_id, grad_output):
        return self.trunk.backward(client_id, self.guard.check(client_id, grad_output))


def _client(model, guarded: bool, seed: int, blocks: int) -> SplitClient:
    split = split_model(replicate(model), Partition(blocks, blocks))
    for part in (split.head, split.trunk, split.tail):
        init_adapter(part, LoraSpec(r=8, alpha=16), seed)
    trunk = LocalTrunk(split.trunk)
    return SplitClient("alice", split.head, split.tail, _Checked(trunk) if guarded else trunk)


def _batch(step: int, batch: int, length: int, vocab: int) -> dict:
    ids = torch.randint(10, vocab, (batch, length), generator=torch.Generator().manual_seed(step))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--blocks", type=int, default=5, help="block pairs (guarded, unguarded)")
    parser.add_argument("--block-steps", type=int, default=6, help="timed training steps per block")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--head-tail", type=int, default=2, help="blocks of the head and of the tail")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/guard_overhead.json"))
    args = parser.parse_args()

    model, _ = load_model(args.model)
    vocab = model.config.vocab_size
    clients = {guarded: _client(model, guarded, 0, args.head_tail) for guarded in (True, False)}
    for guarded, client in clients.items():  # warm-up: allocations, and the guard's first samples
        local_trunk.guarded_step = guarded_step if guarded else _plain_step
        for step in range(2):
            client.train_step(_batch(step, args.batch_size, args.length, vocab))
    ratios, seconds = [], {"guarded": [], "unguarded": []}
    for block in range(args.blocks):
        times = {}
        for guarded in ((True, False) if block % 2 == 0 else (False, True)):
            local_trunk.guarded_step = guarded_step if guarded else _plain_step
            start = time.perf_counter()
            for step in range(args.block_steps):
                clients[guarded].train_step(_batch(1000 * block + step, args.batch_size, args.length, vocab))
            times[guarded] = time.perf_counter() - start
        seconds["guarded"].append(times[True])
        seconds["unguarded"].append(times[False])
        ratios.append(times[False] / times[True])  # throughput guarded / unguarded
        print(f"block {block}: guarded {times[True]:.2f} s, unguarded {times[False]:.2f} s, "
              f"throughput ratio {ratios[-1]:.3f}", flush=True)
    local_trunk.guarded_step = guarded_step
    result = {"args": {k: str(v) for k, v in vars(args).items()},
              "machine": platform.processor() or platform.machine(), "seconds": seconds,
              "ratios": ratios, "median_ratio": statistics.median(ratios)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(f"guarded / unguarded throughput: median {result['median_ratio']:.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f}) over {args.blocks} block pairs; saved {args.output}")


if __name__ == "__main__":
    main()
