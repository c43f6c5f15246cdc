"""Load: many clients training at once against one trunk server, for minutes.

A real `splitfed serve` process (tiny model, TLS on loopback, AES-256-GCM payloads) and N clients in
this process (one thread and one session each) doing split training steps back to back for
`--seconds`. Reports errors (target 0), p50 / p99 step latency, steps per second, and the server's
resident memory after warm-up and at the end (target: growth under 5%).

    .venv/bin/python benchmarks/load.py --clients 16 32 --seconds 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
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
from splitfed.security import Identity, PublicIdentity, create_identity_files, create_server_files
from splitfed.training.replicate import replicate
from splitfed.transport.connection import TrunkConnection


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _run(args: argparse.Namespace, clients: int, model, keys: Path) -> dict:
    allow = keys / f"allow{clients}"
    allow.mkdir()
    for index in range(clients):
        (allow / f"c{index}.pub").write_bytes((keys / f"c{index}.pub").read_bytes())
    port_file = keys / f"port{clients}"
    server = subprocess.Popen(
        [sys.executable, "-m", "splitfed.cli", "serve", "--model", args.model, "--head", "1", "--tail", "1",
         "--identity", str(keys / "server.key"), "--allowlist", str(allow), "--tls-cert",
         str(keys / "tls-cert.pem"), "--tls-key", str(keys / "tls-key.pem"), "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--output", str(keys / f"out{clients}"), "--mode", args.mode,
         "--set", "turn_timeout_s=600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not port_file.is_file():
        if server.poll() is not None:
            raise RuntimeError("the trunk server did not start")
        time.sleep(0.2)
    port = int(port_file.read_text())
    latencies: list[float] = []
    errors: list[str] = []
    steps = [0]
    lock = threading.Lock()
    stop = threading.Event()
    blocks = num_layers(model)
    hidden = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)

    def client_loop(index: int) -> None:
        split = split_model(replicate(model), Partition(1, 1))
        init_adapter(split.head, LoraSpec(r=4), index)
        init_adapter(split.tail, LoraSpec(r=4), index)
        connection = TrunkConnection(f"127.0.0.1:{port}", (keys / "tls-cert.pem").read_bytes(), timeout_s=600)
        remote = RemoteTrunk(connection, Identity.load(keys / f"c{index}.key"),
                             PublicIdentity.from_text((keys / "server.pub").read_text()))
        generator = torch.Generator().manual_seed(index)
        try:
            remote.connect((1, blocks - 1), hidden)
            client = SplitClient(f"c{index}", split.head, split.tail, remote)
            while not stop.is_set():
                ids = torch.randint(10, model.config.vocab_size, (2, 32), generator=generator)
                started = time.perf_counter()
                client.train_step({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
                with lock:
                    latencies.append(time.perf_counter() - started)
                    steps[0] += 1
        except Exception as error:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(f"c{index}: {type(error).__name__}: {error}"[:300])
        finally:
            try:
                remote.close()
            finally:
                connection.close()

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(args.warmup)
    rss_start, steps_start, warm_latencies = _rss_mib(server.pid), steps[0], len(latencies)
    time.sleep(max(0.0, args.seconds - args.warmup))
    rss_end = _rss_mib(server.pid)
    stop.set()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.monotonic() - started
    server.send_signal(signal.SIGTERM)
    server.wait(120)
    measured = latencies[warm_latencies:] or latencies
    return {
        "clients": clients,
        "mode": args.mode,
        "seconds": elapsed,
        "steps": steps[0],
        "steps_per_s_after_warmup": (steps[0] - steps_start) / max(1e-9, args.seconds - args.warmup),
        "errors": len(errors),
        "error_samples": errors[:5],
        "step_latency_p50_s": statistics.median(measured) if measured else None,
        "step_latency_p99_s": _percentile(measured, 0.99) if measured else None,
        "server_rss_mib_after_warmup": rss_start,
        "server_rss_mib_end": rss_end,
        "server_rss_growth": (rss_end - rss_start) / rss_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--seconds", type=float, default=300.0, help="duration of each run")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the memory baseline")
    parser.add_argument("--mode", default="sequential", choices=["sequential", "client-batch"])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/load.json"))
    args = parser.parse_args()
    model, _ = load_model(args.model)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        create_server_files(keys, ["localhost"], ["127.0.0.1"])
        for index in range(max(args.clients)):
            create_identity_files(keys, f"c{index}")
        for clients in args.clients:
            run = _run(args, clients, model, keys)
            print(json.dumps(run), flush=True)
            runs.append(run)
    result = {"model": args.model, "runs": runs,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
