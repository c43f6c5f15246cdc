"""Parallel server modes vs centralized training at the same total batch, in one run.

For 1, 2 and 4 clients: a real `splitfed serve --mode M` process (TLS + AES-GCM payloads on
loopback) and each client a process of its own with its own head and tail, against the centralized
baseline (the unsplit model with LoRA, on batches of ``--batch-size``). Prints and saves JSON and a
PNG of the ratios to centralized. Everything shares this machine's cores.

Paired blocks: the machines this runs on are shared, and their speed drifts by 10-20 % from one
minute to the next, more than the differences measured. So the federation and the baseline run
alternately, in ``--blocks`` blocks of about the same tokens (``--block-steps`` steps per client; the
baseline as many centralized steps as that is rows), the server and the clients staying connected
in between; each block pair gives a ratio, and a mode's ratio is the median of its pairs. The
baseline computes in a process of its own too (``benchmarks/mode_workers.py`` says why).

A trunk step sees the centralized batch in every mode but the last:

* ``sequential``: the trunk serves one client step at a time, so each client trains on batches of
  ``--batch-size`` (FedSEA-LLaMA's Table 7 setting: batch 1 for every client and for centralized);
* ``client-batch``: ``--batch-size / clients`` rows per client, concatenated into one trunk step;
* ``hierarchical``: ``--batch-size / clients`` rows per client, one client per sub-server, the
  sub-servers' parallel steps together one centralized batch;
* ``sequential-split``: sequential mode with ``--batch-size / clients`` rows per client, to show what
  the smaller per-client batches alone cost (each trunk step then sees less than a centralized one).

For the sequential modes a third block runs the same client steps in the baseline's process, with the
trunk in-process (``floor``): what the split costs apart from the network and the processes.

Torch threads of each client (``--client-threads auto``): every core in the sequential modes, where
the client holding the turn computes while the others wait; cores / clients in the batched modes,
where they compute at once. The server keeps its compute on one thread per sub-server. The client
processes spin-wait briefly between operations, as the demo's co-located clients do
(``--client-spin``; ``splitfed/colocation.py`` says why).

    .venv/bin/python benchmarks/modes.py --model tiny-llama
    .venv/bin/python benchmarks/modes.py --model smollm2 --blocks 5
"""

from __future__ import annotations

import argparse
import json
import math
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

from splitfed.colocation import colocated_environment
from splitfed.models import load_model, num_layers
from splitfed.security import create_identity_files, create_server_files

MODES = ("sequential", "client-batch", "hierarchical", "sequential-split", "hierarchical-ray")
DEFAULT_MODES = MODES[:4]  # hierarchical-ray (sub-servers as Ray actors) is asked for by name
WORKER = Path(__file__).with_name("mode_workers.py")


def _rows(args, mode: str, clients: int) -> int:
    """Rows of each client's batch (see the module docstring)."""
    return args.batch_size if mode == "sequential" else args.batch_size // clients


class Worker:
    """One ``benchmarks/mode_workers.py`` process: blocks of steps on command, each answered with its
    tokens and seconds."""

    def __init__(self, role: str, args, log: Path, environment: dict[str, str] | None = None,
                 **options) -> None:
        command = [sys.executable, str(WORKER), "--role", role, "--model", args.model, "--length",
                   str(args.length), "--head", str(args.head), "--tail", str(args.tail)]
        for name, value in options.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        self.log = log
        self.ready = False
        with log.open("w") as errors:  # the child keeps its own copy of the file descriptor
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=errors, text=True, env=environment)

    def wait_ready(self) -> None:
        if not self.ready:
            self._read("ready")
            self.ready = True

    def _read(self, prefix: str) -> str:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"a benchmark worker ended (exit {self.process.wait()}):\n{_tail(self.log)}")

    def send(self, **command) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def result(self) -> dict:
        return json.loads(self._read("result "))

    def block(self, **command) -> float:
        """Tokens/s of one block."""
        self.send(**command)
        result = self.result()
        return result["tokens"] / result["seconds"]

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a child process's log, to say why it failed."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


class ClientFleet:
    """The federated clients, one process each, training in blocks on command: the baseline runs
    between blocks while the server and the clients stay connected."""

    def __init__(self, args, keys: Path, port: int, clients: int, rows: int, threads: int) -> None:
        environment = colocated_environment() if args.client_spin == "short" else None
        self.workers = [Worker("client", args, keys / f"client{index}.log", environment, rows=rows, port=port,
                               keys=keys, index=index, threads=threads) for index in range(clients)]
        try:
            for worker in self.workers:
                worker.wait_ready()
        except BaseException:
            self.close()
            raise

    def block(self, steps: int) -> float:
        """Tokens/s of ``steps`` steps of every client at once: from the first command sent to the
        last client done."""
        started = time.perf_counter()
        for worker in self.workers:
            worker.send(steps=steps)
        tokens = sum(worker.result()["tokens"] for worker in self.workers)
        return tokens / (time.perf_counter() - started)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


def _serve(args, keys: Path, mode: str, clients: int) -> tuple[subprocess.Popen, int]:
    port_file = keys / f"port-{mode}-{clients}"
    server_mode = {"sequential-split": "sequential", "hierarchical-ray": "hierarchical"}.get(mode, mode)
    port_file.unlink(missing_ok=True)  # a repeat's server writes it anew
    extra = {"sequential": [], "sequential-split": [],
             "hierarchical": ["--set", f"sub_servers={clients}", "--set", "average_every=1"],
             "client-batch": ["--set", f"batch_max_rows={args.batch_size}", "--set", "batch_window_s=5"],
             # each actor reserves its share of the cores, as each in-process sub-server computes on
             # cores / K threads
             "hierarchical-ray": ["--set", f"sub_servers={clients}", "--set", "average_every=1", "--backend",
                                  "ray", "--set", f"ray.local_cpus={args.threads}", "--set",
                                  f"ray.num_cpus={args.threads / clients:g}"],
             }[mode]
    command = [sys.executable, "-m", "splitfed.cli", "serve", "--model", args.model,
               "--head", str(args.head), "--tail", str(args.tail), "--identity", str(keys / "server.key"),
               "--allowlist", str(keys / "allow"), "--tls-cert", str(keys / "tls-cert.pem"), "--tls-key",
               str(keys / "tls-key.pem"), "--listen", "127.0.0.1:0", "--port-file", str(port_file),
               "--mode", server_mode, "--output", str(keys / "out"), *extra]
    log = keys / f"server-{mode}-{clients}.log"
    with log.open("w") as output:  # the child keeps its own copy of the file descriptor
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not port_file.is_file():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the {mode} server did not start:\n{_tail(log)}")
        time.sleep(0.2)
    return server, int(port_file.read_text())


def _client_threads(args, mode: str, clients: int) -> int:
    """Torch threads of each client thread. ``auto``: in sequential mode the client holding the turn
    runs its tail while the others wait, so it gets every core; in the batched modes the clients
    compute at once, so they share the cores."""
    if args.client_threads != "auto":
        return int(args.client_threads)
    return args.threads if mode.startswith("sequential") else max(1, args.threads // clients)


def _measure(args, keys: Path, baseline: Worker, mode: str, clients: int) -> dict:
    """Paired blocks of one mode at ``clients`` clients: federation, centralized and (sequential modes)
    the in-process floor, alternating; medians of the per-block ratios."""
    rows = _rows(args, mode, clients)
    central_steps = math.ceil(clients * args.block_steps * rows / args.batch_size)
    floor = mode.startswith("sequential") and args.floor
    server, port = _serve(args, keys, mode, clients)
    try:
        fleet = ClientFleet(args, keys, port, clients, rows, _client_threads(args, mode, clients))
        try:
            baseline.wait_ready()  # it loaded while the server and the clients started
            fleet.block(args.warmup)  # each side's first block warms it up and is not counted
            baseline.block(kind="centralized", steps=args.warmup)
            if floor:
                baseline.block(kind="floor", rows=rows, clients=clients, steps=args.warmup)
            speeds: dict[str, list[float]] = {"federated": [], "centralized": [], "floor": []}
            for index in range(args.blocks):
                if index % 2 == 0:  # alternate who goes first: drift within a pair cancels over pairs
                    speeds["centralized"].append(baseline.block(kind="centralized", steps=central_steps))
                    speeds["federated"].append(fleet.block(args.block_steps))
                else:
                    speeds["federated"].append(fleet.block(args.block_steps))
                    speeds["centralized"].append(baseline.block(kind="centralized", steps=central_steps))
                if floor:
                    speeds["floor"].append(baseline.block(kind="floor", rows=rows, clients=clients,
                                                          steps=args.block_steps))
        finally:
            fleet.close()  # each client closes its session
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    run = _summary(speeds, mode, clients)
    run.update(rows_per_client=rows, client_torch_threads=_client_threads(args, mode, clients))
    return run


def _summary(speeds: dict[str, list[float]], mode: str, clients: int) -> dict:
    def ratios(top: str, bottom: str) -> list[float]:
        return [a / b for a, b in zip(speeds[top], speeds[bottom], strict=True)]

    run = {"mode": mode, "clients": clients, "tokens_per_s": statistics.median(speeds["federated"]),
           "centralized_tokens_per_s": statistics.median(speeds["centralized"]),
           "over_centralized": statistics.median(ratios("federated", "centralized")),
           "over_centralized_each": ratios("federated", "centralized"),
           "tokens_per_s_each": speeds["federated"], "centralized_tokens_per_s_each": speeds["centralized"]}
    if speeds["floor"]:
        run.update(floor_tokens_per_s=statistics.median(speeds["floor"]),
                   floor_over_centralized=statistics.median(ratios("floor", "centralized")),
                   over_floor=statistics.median(ratios("federated", "floor")),
                   floor_tokens_per_s_each=speeds["floor"])
    return run


def _key_files(keys: Path, clients: int) -> None:
    create_server_files(keys, ["localhost"], ["127.0.0.1"])
    for index in range(clients):
        create_identity_files(keys, f"c{index}")
        create_identity_files(keys / "allow", f"c{index}")
        for suffix in ("key", "pub"):
            source = keys / "allow" / f"c{index}.{suffix}"
            (keys / f"c{index}.{suffix}").write_bytes(source.read_bytes())
        (keys / "allow" / f"c{index}.key").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--blocks", type=int, default=5, help="measured block pairs per mode and count")
    parser.add_argument("--block-steps", type=int, default=2, help="steps per client in a block")
    parser.add_argument("--warmup", type=int, default=2, help="steps per client before the first block")
    parser.add_argument("--batch-size", type=int, default=8, help="total rows per trunk step")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--client-threads", default="auto", help="torch threads of each client thread, or "
                        "auto: every core in sequential mode, cores / clients in the batched modes")
    parser.add_argument("--client-spin", choices=("short", "default"), default="short", help="OpenMP "
                        "spin-wait of the client processes: short, as splitfed sets for clients sharing a "
                        "machine (splitfed.colocation), or the runtime's default")
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the in-process "
                        "sequential floor (the split's cost without network or processes)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES),
                        help="hierarchical-ray: hierarchical mode with each sub-server a Ray actor")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.blocks < 1 or args.block_steps < 1:
        parser.error("--blocks and --block-steps must be at least 1")
    split_modes = [mode for mode in args.modes if mode != "sequential"]
    uneven = [count for count in args.clients if count > 1 and split_modes and args.batch_size % count]
    if uneven:
        parser.error(f"--batch-size {args.batch_size} does not split evenly across {uneven[0]} clients "
                     f"(the modes {', '.join(split_modes)} give each client batch-size / clients rows)")
    args.threads = torch.get_num_threads()
    output = args.output or Path(f"benchmarks/results/modes_{args.model}.json")
    model, _ = load_model(args.model)  # for its depth: the workers load their own
    if args.head + args.tail >= num_layers(model):
        args.head = args.tail = 1
    results = {"model": args.model, "batch_size": args.batch_size, "length": args.length,
               "blocks": args.blocks, "block_steps": args.block_steps, "client_spin": args.client_spin,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "torch_threads": args.threads}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        _key_files(keys, max(args.clients))
        baseline = Worker("baseline", args, keys / "baseline.log", batch_size=args.batch_size)
        try:
            for clients in args.clients:
                for mode in args.modes:
                    if mode in ("client-batch", "sequential-split") and clients == 1:
                        continue  # the same as sequential
                    run = _measure(args, keys, baseline, mode, clients)
                    results["runs"].append(run)
                    print(json.dumps(run), flush=True)
        finally:
            baseline.close()
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
        xs, ys, spreads = [], [], [[], []]
        for position, count in enumerate(clients):
            for run in results["runs"]:
                if run["mode"] == mode and run["clients"] == count:
                    xs.append(position + (offset - 1.5) * width)
                    ys.append(run["over_centralized"])
                    pairs = run["over_centralized_each"]  # the bar: median; the whisker: range of pairs
                    spreads[0].append(run["over_centralized"] - min(pairs))
                    spreads[1].append(max(pairs) - run["over_centralized"])
        axis.bar(xs, ys, width, yerr=spreads, capsize=3, label=mode)
        floors = [(position + (offset - 1.5) * width, run["floor_over_centralized"])
                  for position, count in enumerate(clients) for run in results["runs"]
                  if run["mode"] == mode and run["clients"] == count and "floor_over_centralized" in run]
        if floors:
            axis.scatter(*zip(*floors, strict=True), marker="_", s=300, color="black", zorder=3,
                         label="same steps in-process (floor)" if mode == "sequential" else None)
    axis.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="centralized")
    axis.set_xticks(range(len(clients)), [f"{c} client(s)" for c in clients])
    axis.axhline(1 / 1.1, color="gray", linewidth=0.8, linestyle=":", label="1.1x centralized time")
    axis.set_ylabel("throughput / centralized (median of pairs, range)")
    axis.set_title(f"{results['model']}: server modes at total batch {results['batch_size']} "
                   f"({results['machine']['cpus']} CPU cores)")
    axis.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
