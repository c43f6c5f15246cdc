"""The processes of ``benchmarks/modes.py`` other than the server: a federated client, or the baselines.

``modes.py`` starts this script once per client (``--role client``) and once for the baselines
(``--role baseline``), waits for its ``ready`` line, and then sends one JSON line per block on stdin;
each block is answered with ``result {"seconds": s, "tokens": t}``. The models, adapters, optimizers
and the client's session persist between blocks, so only the first block pays for the warm-up
(``modes.py`` times that block and discards it). Closing stdin ends the process (a client closes its
session first).

* client: ``{"steps": n}``: ``n`` split training steps of ``--rows`` rows through the server at
  ``--port`` (TLS + AES-GCM session, the key files in ``--keys``);
* baseline: ``{"kind": "centralized", "steps": n}``: ``n`` steps of the unsplit model with LoRA on
  ``--batch-size`` rows; ``{"kind": "floor", "rows": r, "clients": c, "steps": n}``: ``n`` rounds of
  sequential split steps, one per client of ``r`` rows, the trunk in this process.

Why processes: a real client is a process of its own, with an OpenMP runtime of its own. Clients as
threads of one process share one runtime, whose behaviour changes with the number of threads in it
(more OpenMP threads than cores: it stops spin-waiting between operations, slowing each by about a
third), and a baseline computed among them would share it too. Here each process computes on its main
thread alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.models import LoraSpec, init_adapter, load_model, num_layers, split_model
from splitfed.models.split import Partition, SplitModel
from splitfed.models.whole import WholeModel
from splitfed.security import Identity, PublicIdentity
from splitfed.server.local_trunk import LocalTrunk
from splitfed.training.loss import causal_lm_loss
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from splitfed.transport.connection import TrunkConnection

ADAPTER = LoraSpec(r=8, alpha=16)


def batch(rows: int, length: int, vocab: int, seed: int) -> dict:
    """Random token rows, labelled with themselves (a causal LM step)."""
    ids = torch.randint(10, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def own_parts(model, args) -> SplitModel:
    """A copy of ``model`` split at ``--head`` / ``--tail`` with fresh LoRA adapters on head and tail."""
    split = split_model(replicate(model), Partition(args.head, args.tail))
    init_adapter(split.head, ADAPTER, 0)
    init_adapter(split.tail, ADAPTER, 0)
    return split


class Centralized:
    """The unsplit model with LoRA and its optimizer, trained in blocks of steps."""

    def __init__(self, model, args) -> None:
        self.model, self.args = model, args
        self.whole = WholeModel(replicate(model), ADAPTER)
        self.optimizer = OptimizerSettings().build(self.whole.parameters())
        self.step = 0

    def run(self, steps: int) -> int:
        for _ in range(steps):
            rows = batch(self.args.batch_size, self.args.length, self.model.config.vocab_size, self.step)
            causal_lm_loss(self.whole(rows["input_ids"], rows["attention_mask"]), rows["labels"]).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        return steps * self.args.batch_size * self.args.length


class Clients:
    """Split clients training in turn, one step each per round, on batches of ``rows`` rows."""

    def __init__(self, model, args, clients: list[SplitClient], rows: int, first_seed: int = 0) -> None:
        self.vocab, self.length, self.rows = model.config.vocab_size, args.length, rows
        self.clients, self.first_seed = clients, first_seed
        self.step = 0

    def run(self, steps: int) -> int:
        for _ in range(steps):
            for index, client in enumerate(self.clients):
                seed = 1000 * (self.first_seed + index) + self.step
                client.train_step(batch(self.rows, self.length, self.vocab, seed))
            self.step += 1
        return steps * len(self.clients) * self.rows * self.length


def sequential_floor(model, args, rows: int, clients: int) -> Clients:
    """Sequential split steps of ``clients`` clients over one in-process trunk: what the split and the
    per-client batches cost apart from the network and the processes."""
    trunk_split = split_model(replicate(model), Partition(args.head, args.tail))
    init_adapter(trunk_split.trunk, ADAPTER, 0)
    trunk = LocalTrunk(trunk_split.trunk)
    runners = []
    for index in range(clients):
        split = own_parts(model, args)
        runners.append(SplitClient(f"c{index}", split.head, split.tail, trunk))
    return Clients(model, args, runners, rows)


def remote_client(model, args):
    """This process's client, connected to the server; returns (trainer, the session to close)."""
    keys = Path(args.keys)
    split = own_parts(model, args)
    certificate = (keys / "tls-cert.pem").read_bytes()
    connection = TrunkConnection(f"127.0.0.1:{args.port}", certificate, timeout_s=600)
    remote = RemoteTrunk(connection, Identity.load(keys / f"c{args.index}.key"),
                         PublicIdentity.from_text((keys / "server.pub").read_text()))
    hidden = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    remote.connect((args.head, num_layers(model) - args.tail), hidden)
    client = SplitClient(f"c{args.index}", split.head, split.tail, remote)
    return Clients(model, args, [client], args.rows, first_seed=args.index), remote


def serve(args) -> None:
    """Answer block commands from stdin until it closes."""
    model, _ = load_model(args.model)
    session = None
    trainers: dict[str, Centralized | Clients] = {}
    floor_shape: tuple[int, int] | None = None
    if args.role == "client":
        trainers["client"], session = remote_client(model, args)
    print("ready", flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        kind = command.get("kind", "client")
        if kind == "floor":
            shape = (int(command["rows"]), int(command["clients"]))
            if floor_shape != shape:
                trainers.pop("floor", None)  # free the previous shape's copies first
                trainers["floor"], floor_shape = sequential_floor(model, args, *shape), shape
        elif kind == "centralized" and kind not in trainers:
            trainers[kind] = Centralized(model, args)
        if kind not in trainers:
            raise ValueError(f"a {args.role} process does not run {kind!r} blocks")
        started = time.perf_counter()
        tokens = trainers[kind].run(int(command["steps"]))
        seconds = time.perf_counter() - started
        print("result " + json.dumps({"seconds": seconds, "tokens": tokens}), flush=True)
    if session is not None:
        session.close()
        session.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("client", "baseline"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--head", type=int, required=True)
    parser.add_argument("--tail", type=int, required=True)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, every core)")
    parser.add_argument("--batch-size", type=int, help="baseline: rows of a centralized step")
    parser.add_argument("--rows", type=int, help="client: rows of each step")
    parser.add_argument("--port", type=int, help="client: the server's port on 127.0.0.1")
    parser.add_argument("--keys", help="client: folder of the key files")
    parser.add_argument("--index", type=int, help="client: which client (its key is c<index>.key)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    serve(args)


if __name__ == "__main__":
    main()
