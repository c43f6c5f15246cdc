"""Split inference over the network vs local Hugging Face generate, in one run.

A real trunk server process (`splitfed serve`, TLS with a pinned certificate on loopback, AES-256-GCM
payloads) and, in this process, the client's head and tail. For each context length, greedy decoding
of a fixed number of new tokens with:

* local: `model.generate` on the whole model in this process;
* split, cache: every part keeps its KV cache; each decode step sends one token's hidden state;
* split, no cache: every step sends the whole sequence through every part again (as FL-GLM does).

tokens/s = new tokens / wall time of the whole generation (prefill included), the best of
``--repeats`` interleaved runs of local and split with cache (each run's time is saved too). Then 8
clients generate at once (their decode steps are batched on the server) against one client alone, and
the server process's resident memory is read before, during and after their sessions, for
``--concurrent-rounds`` rounds of 8 new sessions each (the first round also grows the server's pool of
request threads, which stays). The processes spin-wait briefly between OpenMP operations
(``--client-spin``), as splitfed's co-located clients do: a client waiting for the server would
otherwise spin on the cores the server needs (``splitfed/colocation.py``).

    .venv/bin/python benchmarks/generation_speed.py --model smollm2
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

from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.colocation import colocated_environment
from splitfed.inference import SamplingSettings, SplitGenerator
from splitfed.models import LoraSpec, init_adapter, load_model, num_layers, split_model
from splitfed.models.split import Partition
from splitfed.security import Identity, PublicIdentity, create_identity_files, create_server_files
from splitfed.server.compute import use_torch_threads
from splitfed.tasks import load_task
from splitfed.transport.connection import TrunkConnection

CLIENTS = 8


def _longest(args: argparse.Namespace) -> int:
    """The longest sequence any run sends: a timed context or the last concurrent client's prompt."""
    return max(max(args.contexts) + args.new_tokens,
               args.concurrent_context + 7 * (CLIENTS - 1) + args.concurrent_tokens)


def _start_server(args: argparse.Namespace, keys: Path) -> tuple[subprocess.Popen, int]:
    port_file = keys / "port"
    allow = keys / "allow"
    allow.mkdir()
    for index in range(CLIENTS):
        (allow / f"bench{index}.pub").write_bytes((keys / f"bench{index}.pub").read_bytes())
    command = [sys.executable, "-m", "splitfed.cli", "serve", "--model", args.model, "--head", str(args.head),
               "--tail", str(args.tail), "--identity", str(keys / "server.key"), "--allowlist", str(allow),
               "--tls-cert", str(keys / "tls-cert.pem"), "--tls-key", str(keys / "tls-key.pem"),
               "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--output", str(keys / "out"),
               "--set", f"max_length={_longest(args) + 8}"]
    environment = {**os.environ, **dict(item.split("=", 1) for item in args.server_env)}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    deadline = time.monotonic() + 240
    while not port_file.is_file():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the trunk server did not start")
        time.sleep(0.2)
    return server, int(port_file.read_text())


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _prompt_ids(tokenizer, length: int) -> torch.Tensor:
    """``length`` tokens of real text (BoolQ passages shipped with splitfed)."""
    text = " ".join(example.prompt for example in load_task("boolq", "val", limit=100))
    ids = tokenizer(text)["input_ids"]
    if len(ids) < length:
        raise ValueError(f"not enough text for a {length}-token context")
    return torch.tensor([ids[:length]])


class Client:
    """One client: head and tail here, a session with the server, one generation stream."""

    def __init__(self, args, model, keys: Path, port: int, index: int) -> None:
        spec = LoraSpec(r=8, alpha=16)
        self.split = split_model(model, Partition(args.head, args.tail))
        for part in (self.split.head, self.split.tail):
            init_adapter(part, spec, 0)  # lora_B = 0: the same function as the plain model
        self.connection = TrunkConnection(f"127.0.0.1:{port}", (keys / "tls-cert.pem").read_bytes())
        self.remote = RemoteTrunk(self.connection, Identity.load(keys / f"bench{index}.key"),
                                  PublicIdentity.from_text((keys / "server.pub").read_text()))
        hidden = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
        self.remote.connect((args.head, num_layers(model) - args.tail), hidden)

    def generate(self, ids: torch.Tensor, new_tokens: int, use_cache: bool = True,
                 ) -> tuple[torch.Tensor, float]:
        generator = SplitGenerator(self.split.head, self.split.tail, self.remote, use_cache=use_cache)
        self.step_bytes: list[int] = []
        started = time.perf_counter()
        tokens = []
        sent = self.connection.bytes_sent
        for token in generator.generate(ids, sampling=SamplingSettings(max_new_tokens=new_tokens)):
            self.step_bytes.append(self.connection.bytes_sent - sent)  # the step that produced it
            sent = self.connection.bytes_sent
            tokens.append(token)
        seconds = time.perf_counter() - started
        generator.close()
        return torch.stack(tokens, dim=1), seconds

    def close(self) -> None:
        self.remote.close()
        self.connection.close()


def _local(model, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:], time.perf_counter() - started


def _contexts(args, model, tokenizer, client: Client) -> list[dict]:
    rows = []
    warm = _prompt_ids(tokenizer, 16)
    _local(model, warm, 4)
    client.generate(warm, 4)
    for context in args.contexts:
        ids = _prompt_ids(tokenizer, context)
        local_times, cache_times = [], []
        for _ in range(args.repeats):  # interleaved, best of N: robust to a shared, noisy machine
            local_tokens, seconds = _local(model, ids, args.new_tokens)
            local_times.append(seconds)
            cache_tokens, seconds = client.generate(ids, args.new_tokens)
            cache_times.append(seconds)
        local_s, cache_s = min(local_times), min(cache_times)
        prefill_bytes, *decode_bytes = client.step_bytes
        nocache_new = min(args.new_tokens, args.no_cache_tokens)
        nocache_tokens, nocache_s = client.generate(ids, nocache_new, use_cache=False)
        row = {
            "context": context,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "local_seconds_each": local_times,
            "split_cache_seconds_each": cache_times,
            "local_tokens_per_s": args.new_tokens / local_s,
            "split_cache_tokens_per_s": args.new_tokens / cache_s,
            "split_no_cache_new_tokens": nocache_new,
            "split_no_cache_tokens_per_s": nocache_new / nocache_s,
            "split_cache_identical_to_local": bool(torch.equal(cache_tokens, local_tokens)),
            "split_no_cache_identical_to_local": bool(torch.equal(nocache_tokens,
                                                                  local_tokens[:, :nocache_new])),
            "bytes_sent_prefill": prefill_bytes,
            "bytes_sent_per_decode_step": sorted(set(decode_bytes)),
        }
        row["cache_over_no_cache"] = row["split_cache_tokens_per_s"] / row["split_no_cache_tokens_per_s"]
        row["cache_over_local"] = row["split_cache_tokens_per_s"] / row["local_tokens_per_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _concurrency(args, model, tokenizer, keys: Path, port: int, server_pid: int, first: Client) -> dict:
    prompts = [_prompt_ids(tokenizer, args.concurrent_context + 7 * index) for index in range(CLIENTS)]
    expected = [_local(model, ids, args.concurrent_tokens)[0] for ids in prompts]
    alone_tokens, alone_s = first.generate(prompts[0], args.concurrent_tokens)
    first.close()
    share = max(1, torch.get_num_threads() // CLIENTS)
    rounds = []
    for _ in range(args.concurrent_rounds):  # the first round also grows the server's thread pool
        time.sleep(1.0)
        baseline = _rss_mib(server_pid)
        clients = [Client(args, model, keys, port, index) for index in range(CLIENTS)]
        results: dict[int, tuple[torch.Tensor, float]] = {}
        peak = [baseline]

        def run(index: int, clients=clients, results=results, peak=peak) -> None:
            # the clients share this machine's cores, each on its own share (several threads computing
            # with all the cores each would slow all of them: see benchmarks/modes.py)
            use_torch_threads(share)
            results[index] = clients[index].generate(prompts[index], args.concurrent_tokens)
            peak.append(_rss_mib(server_pid))

        threads = [threading.Thread(target=run, args=(index,)) for index in range(CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        for client in clients:
            client.close()
        time.sleep(1.0)
        after = _rss_mib(server_pid)
        correct = [bool(torch.equal(results[i][0], expected[i])) for i in range(CLIENTS)]
        rounds.append({
            "aggregate_tokens_per_s": CLIENTS * args.concurrent_tokens / wall,
            "aggregate_over_alone": CLIENTS * alone_s / wall,
            "every_output_correct": all(correct),
            "server_rss_mib_before": baseline,
            "server_rss_mib_peak": max(peak),
            "server_rss_mib_after_sessions_closed": after,
        })
        print(json.dumps(rounds[-1]), flush=True)
    return {
        "clients": CLIENTS,
        "context": args.concurrent_context,
        "new_tokens_each": args.concurrent_tokens,
        "one_client_alone_tokens_per_s": args.concurrent_tokens / alone_s,
        "one_client_alone_correct": bool(torch.equal(alone_tokens, expected[0])),
        "rounds": rounds,
        **rounds[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-cache-tokens", type=int, default=64,
                        help="new tokens timed without cache (fewer is faster and favours the no-cache row, "
                             "whose cost per token grows with the sequence)")
    parser.add_argument("--repeats", type=int, default=3, help="local and split-with-cache runs per "
                        "context, interleaved; the best of them is reported (the machine is shared)")
    parser.add_argument("--concurrent-context", type=int, default=64)
    parser.add_argument("--concurrent-tokens", type=int, default=32)
    parser.add_argument("--concurrent-rounds", type=int, default=2, help="rounds of the concurrent clients; "
                        "memory before and after each (the first also grows the server's thread pool); "
                        "0 skips the concurrency part")
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="environment of the server process, e.g. OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--client-spin", choices=("short", "default"), default="short", help="OpenMP "
                        "spin-wait of this process (the client, and local generate) and of the server it "
                        "starts: short, as splitfed sets for clients sharing a machine "
                        "(splitfed.colocation), or the runtime's default")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.concurrent_rounds < 0:
        parser.error("--concurrent-rounds must be >= 0")
    output = args.output or Path(f"benchmarks/results/generation_speed_{args.model}.json")
    environment = colocated_environment()
    if args.client_spin == "short" and environment != dict(os.environ):
        # the OpenMP runtime reads its spin count when it is loaded: start again with it set
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)

    model, tokenizer = load_model(args.model)
    model.eval()
    if args.head + args.tail >= num_layers(model):
        args.head, args.tail = 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        create_server_files(keys, ["localhost"], ["127.0.0.1"])
        for index in range(CLIENTS):
            create_identity_files(keys, f"bench{index}")
        server, port = _start_server(args, keys)
        try:
            client = Client(args, model, keys, port, 0)
            rows = _contexts(args, model, tokenizer, client)
            if args.concurrent_rounds > 0:
                concurrency = _concurrency(args, model, tokenizer, keys, port, server.pid, client)
            else:
                client.close()
                concurrency = {"skipped": "--concurrent-rounds 0"}
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    result = {
        "model": args.model,
        "partition": [args.head, args.tail],
        "transport": "gRPC over TLS (pinned, loopback) + AES-256-GCM payloads; server in its own process",
        "contexts": rows,
        "concurrent": concurrency,
        "client_spin": args.client_spin,
        "client_omp_environment": {name: os.environ[name] for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
                                   if name in os.environ},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
