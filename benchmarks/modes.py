"""Parallel server modes vs centralized training at the same total batch, in one run.

For 1, 2 and 4 clients: a real `splitfed serve --mode M` process (TLS + AES-GCM payloads on
loopback) and the clients as threads of this process, each with its own head and tail, each training
``--steps`` steps, against the centralized baseline (the unsplit model, trained in this process on
batches of ``--batch-size``), measured right before each run (``--repeats`` alternations, best of
each, for a shared machine). Prints and saves JSON and a PNG of tokens/s per mode with the ratios.

A trunk step sees the centralized batch in every mode but the last:

* ``sequential``: the trunk serves one client step at a time, so each client trains on batches of
  ``--batch-size`` (FedSEA-LLaMA's Table 7 setting: batch 1 for every client and for centralized);
* ``client-batch``: ``--batch-size / clients`` rows per client, concatenated into one trunk step;
* ``hierarchical``: ``--batch-size / clients`` rows per client, one client per sub-server, the
  sub-servers' parallel steps together one centralized batch;
* ``sequential-split``: sequential mode with ``--batch-size / clients`` rows per client, to show what
  the smaller per-client batches alone cost (each trunk step then sees less than a centralized one).

Threads: an OpenMP runtime with more than one thread team in a process (every thread that computes
gets one) slows every operation by about a third, so this process computes only on fresh threads
that end after each measurement: the centralized baseline on one thread with all torch threads, the
clients on one thread each (torch threads: ``--client-threads``), as the server process keeps its
compute on one thread. For the sequential modes the same client steps are also run in one thread
without network or processes (``floor``): what the split costs apart from the network and processes.

    .venv/bin/python benchmarks/modes.py --model tiny-llama
    .venv/bin/python benchmarks/modes.py --model smollm2 --steps 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.models import LoraSpec, init_adapter, load_model, num_layers, split_model
from splitfed.models.split import Partition
from splitfed.models.whole import WholeModel
from splitfed.security import Identity, PublicIdentity, create_identity_files, create_server_files
from splitfed.server.compute import single_threaded_torch, use_torch_threads
from splitfed.server.local_trunk import LocalTrunk
from splitfed.training.loss import causal_lm_loss
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from splitfed.transport.connection import TrunkConnection

MODES = ("sequential", "client-batch", "hierarchical", "sequential-split")


def _rows(args, mode: str, clients: int) -> int:
    """Rows of each client's batch (see the module docstring)."""
    return args.batch_size if mode == "sequential" else args.batch_size // clients


def _batch(rows: int, length: int, vocab: int, seed: int) -> dict:
    ids = torch.randint(10, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _on_fresh_thread(function, threads: int, *args):
    """``function(*args)`` on a new thread with ``threads`` torch threads; its result."""
    result: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            use_torch_threads(threads)
            result.append(function(*args))
        except BaseException as error:  # noqa: BLE001 - raised below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _centralized(model, args) -> float:
    whole = WholeModel(replicate(model), LoraSpec(r=8, alpha=16))
    optimizer = OptimizerSettings().build(whole.parameters())
    started = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            started = time.perf_counter()
        batch = _batch(args.batch_size, args.length, model.config.vocab_size, step)
        causal_lm_loss(whole(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return args.steps * args.batch_size * args.length / (time.perf_counter() - started)


def _serve(args, keys: Path, mode: str, clients: int) -> tuple[subprocess.Popen, int]:
    port_file = keys / f"port-{mode}-{clients}"
    server_mode = "sequential" if mode == "sequential-split" else mode
    port_file.unlink(missing_ok=True)  # a repeat's server writes it anew
    extra = {"sequential": [], "sequential-split": [],
             "hierarchical": ["--set", f"sub_servers={clients}", "--set", "average_every=1"],
             "client-batch": ["--set", f"batch_max_rows={args.batch_size}", "--set", "batch_window_s=5"],
             }[mode]
    command = [sys.executable, "-m", "splitfed.cli", "serve", "--model", args.model,
               "--head", str(args.head), "--tail", str(args.tail), "--identity", str(keys / "server.key"),
               "--allowlist", str(keys / "allow"), "--tls-cert", str(keys / "tls-cert.pem"), "--tls-key",
               str(keys / "tls-key.pem"), "--listen", "127.0.0.1:0", "--port-file", str(port_file),
               "--mode", server_mode, "--output", str(keys / "out"), *extra]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not port_file.is_file():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {mode} server did not start")
        time.sleep(0.2)
    return server, int(port_file.read_text())


def _client_threads(args, mode: str, clients: int) -> int:
    """Torch threads of each client thread. ``auto``: in sequential mode the client holding the turn
    runs its tail while the others wait, so it gets every core; in the batched modes the clients
    compute at once, so they share the cores."""
    if args.client_threads != "auto":
        return int(args.client_threads)
    return args.threads if mode.startswith("sequential") else max(1, args.threads // clients)


def _sequential_floor(model, args, mode: str, clients: int) -> float:
    """Tokens/s of the same sequential client steps in this thread without network, processes or
    concurrency: what the split and the per-client batches alone cost against the centralized batch."""
    rows = _rows(args, mode, clients)
    split = split_model(replicate(model), Partition(args.head, args.tail))
    init_adapter(split.trunk, LoraSpec(r=8, alpha=16), 0)
    trunk = LocalTrunk(split.trunk)
    runners = []
    for index in range(clients):
        own = split_model(replicate(model), Partition(args.head, args.tail))
        init_adapter(own.head, LoraSpec(r=8, alpha=16), 0)
        init_adapter(own.tail, LoraSpec(r=8, alpha=16), 0)
        runners.append(SplitClient(f"c{index}", own.head, own.tail, trunk))
    started = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            started = time.perf_counter()
        for index, client in enumerate(runners):
            client.train_step(_batch(rows, args.length, model.config.vocab_size, 1000 * index + step))
    return args.steps * clients * rows * args.length / (time.perf_counter() - started)


def _federated(model, args, keys: Path, mode: str, clients: int) -> float:
    rows = _rows(args, mode, clients)
    server, port = _serve(args, keys, mode, clients)
    try:
        runners = []
        for index in range(clients):
            split = split_model(replicate(model), Partition(args.head, args.tail))
            init_adapter(split.head, LoraSpec(r=8, alpha=16), 0)
            init_adapter(split.tail, LoraSpec(r=8, alpha=16), 0)
            certificate = (keys / "tls-cert.pem").read_bytes()
            connection = TrunkConnection(f"127.0.0.1:{port}", certificate, timeout_s=600)
            remote = RemoteTrunk(connection, Identity.load(keys / f"c{index}.key"),
                                 PublicIdentity.from_text((keys / "server.pub").read_text()))
            hidden = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
            remote.connect((args.head, num_layers(model) - args.tail), hidden)
            runners.append((SplitClient(f"c{index}", split.head, split.tail, remote), remote))
        barrier = threading.Barrier(clients + 1)
        errors: list[BaseException] = []

        torch_threads = _client_threads(args, mode, clients)

        def work(index: int) -> None:
            client, _ = runners[index]
            try:
                use_torch_threads(torch_threads)
                for step in range(args.warmup + args.steps):
                    if step == args.warmup:
                        barrier.wait()
                    batch = _batch(rows, args.length, model.config.vocab_size, 1000 * index + step)
                    client.train_step(batch)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            for thread in threads:
                thread.join()
            raise errors[0] from None
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        if errors:
            raise errors[0]
        for _, remote in runners:
            remote.close()
            remote.connection.close()
        return args.steps * clients * rows * args.length / seconds
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per client")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="total rows per trunk step")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="alternating centralized / federated "
                        "measurements per configuration; the best of each is compared")
    parser.add_argument("--client-threads", default="auto", help="torch threads of each client thread, or "
                        "auto: every core in sequential mode, cores / clients in the batched modes")
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the in-process "
                        "sequential floor (the split's cost without network or processes)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    args.threads = torch.get_num_threads()
    single_threaded_torch()  # this thread prepares; fresh threads compute (see the module docstring)
    output = args.output or Path(f"benchmarks/results/modes_{args.model}.json")
    model, _ = load_model(args.model)
    if args.head + args.tail >= num_layers(model):
        args.head = args.tail = 1
    results = {"model": args.model, "batch_size": args.batch_size, "length": args.length,
               "steps": args.steps, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                "torch_threads": args.threads}, "runs": []}
    results["repeats"] = args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        create_server_files(keys, ["localhost"], ["127.0.0.1"])
        for index in range(max(args.clients)):
            create_identity_files(keys, f"c{index}")
            create_identity_files(keys / "allow", f"c{index}")
            for suffix in ("key", "pub"):
                source = keys / "allow" / f"c{index}.{suffix}"
                (keys / f"c{index}.{suffix}").write_bytes(source.read_bytes())
            (keys / "allow" / f"c{index}.key").unlink()
        for clients in args.clients:
            for mode in args.modes:
                if mode in ("client-batch", "sequential-split") and clients == 1:
                    continue  # the same as sequential
                # the baseline is measured next to each run, alternating, best of --repeats each:
                # on a shared machine a baseline taken once at the start drifts from the runs
                centrals, speeds = [], []
                for _ in range(args.repeats):
                    centrals.append(_on_fresh_thread(_centralized, args.threads, model, args))
                    speeds.append(_federated(model, args, keys, mode, clients))
                speed, central = max(speeds), max(centrals)
                run = {"mode": mode, "clients": clients, "tokens_per_s": speed,
                       "centralized_tokens_per_s": central, "over_centralized": speed / central,
                       "rows_per_client": _rows(args, mode, clients),
                       "client_torch_threads": _client_threads(args, mode, clients),
                       "tokens_per_s_each": speeds, "centralized_tokens_per_s_each": centrals}
                if mode.startswith("sequential") and args.floor:
                    floor = _on_fresh_thread(_sequential_floor, args.threads, model, args, mode, clients)
                    run.update(floor_tokens_per_s=floor, floor_over_centralized=floor / central,
                               over_floor=speed / floor)
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    _plot(results, output.with_suffix(".png"))
    print(json.dumps(results, indent=2))


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    clients = sorted({run["clients"] for run in results["runs"]})
    width = 0.2
    for offset, mode in enumerate(MODES):
        xs, ys = [], []
        for position, count in enumerate(clients):
            for run in results["runs"]:
                if run["mode"] == mode and run["clients"] == count:
                    xs.append(position + (offset - 1.5) * width)
                    ys.append(run["over_centralized"])
        axis.bar(xs, ys, width, label=mode)
        floors = [(position + (offset - 1.5) * width, run["floor_over_centralized"])
                  for position, count in enumerate(clients) for run in results["runs"]
                  if run["mode"] == mode and run["clients"] == count and "floor_over_centralized" in run]
        if floors:
            axis.scatter(*zip(*floors, strict=True), marker="_", s=300, color="black", zorder=3,
                         label="same steps in-process (floor)" if mode == "sequential" else None)
    axis.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="centralized")
    axis.set_xticks(range(len(clients)), [f"{c} client(s)" for c in clients])
    axis.set_ylabel("tokens/s / centralized tokens/s")
    axis.set_title(f"{results['model']}: server modes at total batch {results['batch_size']} "
                   f"({results['machine']['cpus']} CPU cores)")
    axis.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
