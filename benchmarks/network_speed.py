"""Split training over the network (TLS + AES-GCM payloads, loopback) vs centralized, in one run.

A real trunk server process (`splitfed serve`) and, in this process, one client training LoRA with
the trunk behind the encrypted session. The same batches are trained centrally (unsplit model,
same adapter) in alternation with the split steps, so machine noise hits both alike. Reports the
ratio of tokens/s and the bytes on the wire per token per boundary (each of the two boundaries is
crossed twice a step: hidden state up, gradient down).

    .venv/bin/python benchmarks/network_speed.py --model smollm2 --steps 6
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
import time
from pathlib import Path

import torch

from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.models import LoraSpec, init_adapter, load_model, num_layers, split_model
from splitfed.models.split import Partition
from splitfed.models.whole import WholeModel
from splitfed.security import Identity, PublicIdentity, create_identity_files, create_server_files
from splitfed.training.loss import causal_lm_loss
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from splitfed.transport.connection import TrunkConnection


def _start_server(args: argparse.Namespace, keys: Path) -> tuple[subprocess.Popen, int]:
    port_file = keys / "port"
    command = [sys.executable, "-m", "splitfed.cli", "serve", "--model", args.model, "--head", str(args.head),
               "--tail", str(args.tail), "--identity", str(keys / "server.key"), "--allowlist",
               str(keys / "bench.pub"), "--tls-cert", str(keys / "tls-cert.pem"), "--tls-key",
               str(keys / "tls-key.pem"), "--listen", "127.0.0.1:0", "--port-file", str(port_file),
               "--output", str(keys / "server-out")]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not port_file.is_file():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the trunk server did not start")
        time.sleep(0.2)
    return server, int(port_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--wire-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    output = args.output or Path(f"benchmarks/results/network_speed_{args.model}.json")

    model, _ = load_model(args.model)
    if args.head + args.tail >= num_layers(model):
        args.head, args.tail = 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        create_server_files(keys, ["localhost"], ["127.0.0.1"])
        create_identity_files(keys, "bench")
        server, port = _start_server(args, keys)
        try:
            result = _measure(args, model, keys, port)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                         "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _measure(args: argparse.Namespace, model, keys: Path, port: int) -> dict:
    spec = LoraSpec(r=8, alpha=16)
    split = split_model(replicate(model), Partition(args.head, args.tail))
    init_adapter(split.head, spec, 0)
    init_adapter(split.tail, spec, 0)
    connection = TrunkConnection(f"127.0.0.1:{port}", (keys / "tls-cert.pem").read_bytes())
    remote = RemoteTrunk(connection, Identity.load(keys / "bench.key"),
                         PublicIdentity.from_text((keys / "server.pub").read_text()), args.wire_dtype)
    hidden = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    remote.connect((args.head, num_layers(model) - args.tail), hidden)
    client = SplitClient("bench", split.head, split.tail, remote)
    whole = WholeModel(replicate(model), spec)
    optimizer = OptimizerSettings().build(whole.parameters())

    def central_step(batch: dict) -> None:
        loss = causal_lm_loss(whole(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    generator = torch.Generator().manual_seed(0)
    split_times, central_times = [], []
    sent = received = 0
    for index in range(args.warmup + args.steps):
        ids = torch.randint(10, model.config.vocab_size, (args.batch_size, args.length), generator=generator)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        started = time.perf_counter()
        central_step(batch)
        central = time.perf_counter() - started
        before = (connection.bytes_sent, connection.bytes_received)
        started = time.perf_counter()
        client.train_step(batch)
        split_time = time.perf_counter() - started
        if index >= args.warmup:
            central_times.append(central)
            split_times.append(split_time)
            sent += connection.bytes_sent - before[0]
            received += connection.bytes_received - before[1]
    remote.close()
    connection.close()
    tokens = args.batch_size * args.length
    element = {"float32": 4, "bfloat16": 2, "float16": 2}[args.wire_dtype]
    per_token_per_boundary = (sent + received) / (4 * tokens * args.steps)  # 2 boundaries x 2 directions
    return {
        "model": args.model,
        "partition": [args.head, args.tail],
        "batch_size": args.batch_size,
        "length": args.length,
        "wire_dtype": args.wire_dtype,
        "encryption": "TLS (pinned, loopback) + AES-256-GCM payloads",
        "steps_timed": args.steps,
        "centralized_tokens_per_s": tokens / statistics.median(central_times),
        "split_tokens_per_s": tokens / statistics.median(split_times),
        "split_over_centralized": statistics.median(central_times) / statistics.median(split_times),
        "bytes_per_token_per_boundary": per_token_per_boundary,
        "payload_bytes_per_token_per_boundary": hidden * element,
        "overhead_bytes_per_token_per_boundary": per_token_per_boundary - hidden * element,
    }


if __name__ == "__main__":
    main()
