"""How much worse an honest FedAvg average is on a client's own held-out rows than its own adapters (the
noise the self-check's tolerance must let through), and how much worse a poisoned one is.

In one process: tiny-llama, head 1 / tail 1, LoRA r=4, lr 0.01, RTE with Dirichlet label-skewed shards;
each client holds out ``SelfCheckSettings().rows`` rows like a client process. At every round's end, for
each client: the held-out loss with its own adapters, with the honest average, with the average where
one other client submitted every element 100, and where it submitted its adapters scaled so that the
average's norm is 1.9x the honest one's.

    .venv/bin/python benchmarks/self_check.py [--clients 2 3] [--alpha 0.1 0.5] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from splitfed.aggregation.fedavg import weighted_average
from splitfed.client.self_check import hold_out
from splitfed.client.settings import SelfCheckSettings
from splitfed.federation import FederationSettings, InProcessFederation
from splitfed.models import LoraSpec, load_model
from splitfed.tasks import collate
from splitfed.training.optim import OptimizerSettings
from splitfed.training.split_settings import PartitionSettings
from splitfed.training.task_data import DataSettings, load_client_examples


def _scaled(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], ratio: float,
            weights: list[float], index: int) -> dict[str, torch.Tensor]:
    """Client ``index``'s submission that makes the weighted average ``ratio`` x ``target``."""
    total = sum(weights)
    return {k: (ratio * target[k] * total - (target[k] * total - weights[index] * state[k])) / weights[index]
            for k in state}


def _unflat(flat: dict[str, torch.Tensor], like: dict[str, dict[str, torch.Tensor]]) -> dict:
    return {part: {key: flat[f"{part}/{key}"] for key in state} for part, state in like.items()}


def run(clients: int, alpha: float, rounds: int, steps: int, limit: int, seed: int) -> list[dict]:
    model, tokenizer = load_model("tiny-llama")
    pad = int(tokenizer.pad_token_id)
    settings = SelfCheckSettings()
    shards, held = [], []
    for shard in range(clients):
        data = DataSettings(task="rte", limit=limit, shard=shard, shards=clients, seed=seed, max_length=64,
                            scheme="dirichlet", alpha=alpha)
        train, out = hold_out(load_client_examples(data, tokenizer), settings, seed * 1_000_003 + shard)
        shards.append(train)
        held.append(collate(out, pad_token_id=pad) if out else None)  # a tiny shard holds none out
    fed = InProcessFederation(model, shards, lambda rows: collate(rows, pad_token_id=pad), FederationSettings(
        clients=clients, rounds=rounds, local_steps=steps, batch_size=2, seed=seed,
        partition=PartitionSettings(head=1, tail=1), adapter=LoraSpec(r=4, alpha=8),
        optimizer=OptimizerSettings(lr=0.01)))
    rows = []
    for round_index in range(1, rounds + 1):
        for _ in range(steps):
            for index, client in enumerate(fed.clients):
                client.train_step(next(fed._batches[index]))
        states = [c.adapter_states() for c in fed.clients]
        weights = [float(n) for n in fed.shard_sizes]
        flat = [{f"{p}/{k}": v for p, s in st.items() for k, v in s.items()} for st in states]
        honest = weighted_average(flat, weights)
        poisoned = weighted_average([{k: torch.full_like(v, 100.0) for k, v in flat[-1].items()}, *flat[:-1]],
                                    [weights[-1], *weights[:-1]])
        scaled = weighted_average([*flat[:-1], _scaled(flat[-1], honest, 1.9, weights, clients - 1)], weights)
        for index, client in enumerate(fed.clients):
            if held[index] is None:
                continue
            started = time.perf_counter()
            own = client.evaluation_loss(held[index])
            seconds = time.perf_counter() - started
            losses = {"own": own, "seconds_per_check_forward": seconds}
            for name, average in (("honest", honest), ("every-100", poisoned), ("scaled-1.9x", scaled)):
                client.load_adapter_states(_unflat(average, states[index]))
                losses[name] = client.evaluation_loss(held[index])
            rows.append({"clients": clients, "alpha": alpha, "round": round_index, "client": index,
                         **losses, "honest_rel": losses["honest"] / own - 1,
                         "scaled_rel": losses["scaled-1.9x"] / own - 1})
            print(json.dumps(rows[-1]), flush=True)
        for index, client in enumerate(fed.clients):  # every client adopts the honest average
            client.load_adapter_states(_unflat(honest, states[index]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="local steps per round")
    parser.add_argument("--limit", type=int, default=96, help="RTE training rows in all")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rows = [row for clients in args.clients for alpha in args.alpha
            for row in run(clients, alpha, args.rounds, args.steps, args.limit, args.seed)]
    worst = max(row["honest_rel"] for row in rows)
    least = min(row["scaled_rel"] for row in rows)
    print(json.dumps({"honest_worst_rel": worst, "scaled_least_rel": least,
                      "every_100_least": min(row["every-100"] for row in rows)}))


if __name__ == "__main__":
    main()
