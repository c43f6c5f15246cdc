"""Split training and generation through an emulated wide-area link, against loopback and the link's floor.

A real `splitfed serve` and real clients, each in a network namespace of its own, joined by a veth
pair whose two ends are rate-limited with `tc tbf` (uplink: client -> server, downlink: server ->
client). `netem` is not available on these machines, so the round-trip time comes from a small TCP
proxy in the client's namespace that holds every chunk for half the RTT in each direction (at real-time
priority where it can, so that it does not wait for the endpoints' compute to get a core). Profiles:

* datacenter: 10 Gbit/s both ways, 1 ms RTT;
* cross-region: 1 Gbit/s both ways, 40 ms RTT;
* clinic: 100 Mbit/s both ways, 20 ms RTT (an uplink; the downlink is taken as equal).

For each profile and training variant: training examples/s (`splitfed train`, steps after the first),
generation tokens/s (one client, greedy, KV caches), the bytes per step, and the link's floor:
loopback time + bytes / bandwidth + one RTT per exchange (two per training step, one per token). A
variant is a wire codec, optionally with ``@M``: each step in M pipelined micro-batches
(``micro_batches: M``), e.g. ``int8-blockwise@2``. ``--sweep-mbit`` adds symmetric links of those rates
at ``--sweep-rtt-ms`` and plots throughput against bandwidth with each variant's floor. ``--pin`` runs
the server on CPU 1 and the clients on CPU 0, one thread each, as two machines would be: otherwise
they share every core, and whatever the client computes while the server does (micro-batches) takes
cores from it.
Where namespaces cannot be made (not root, no `ip`), it says so and runs the proxy on loopback alone
(delay, no rate limit). The proxy delays bytes, not TCP's acknowledgements, so window growth over a
long RTT is not modelled.

    sudo .venv/bin/python benchmarks/wan.py --model smollm2 --codecs float32 int8-blockwise
    sudo .venv/bin/python benchmarks/wan.py --model smollm2 --profiles --no-generation \
        --codecs float32 bfloat16 int8-blockwise int8-blockwise@2 --sweep-mbit 10 30 100 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROFILES = {"datacenter": (10_000.0, 10_000.0, 1.0), "cross-region": (1_000.0, 1_000.0, 40.0),
            "clinic": (100.0, 100.0, 20.0)}  # uplink Mbit/s, downlink Mbit/s, RTT ms
CLIENT_NS, SERVER_NS = "sfwan-c", "sfwan-s"
CLIENT_IP, SERVER_IP = "10.77.0.1", "10.77.0.2"
PROXY_PORT = 17000


# ------------------------------------------------------------------------------------------ the link

def pinned(args: argparse.Namespace, cpu: int) -> dict:
    """``subprocess`` keywords that run a process on CPU ``cpu`` alone, one thread (``--pin``), or not."""
    env = {**os.environ, "GOMP_SPINCOUNT": "10000"}
    if not args.pin:
        return {"env": env}
    return {"env": {**env, "OMP_NUM_THREADS": "1"}, "preexec_fn": lambda: os.sched_setaffinity(0, {cpu})}


def realtime() -> list[str]:
    """The proxy's command prefix: real-time priority where allowed (root, `chrt`), so that forwarding a
    chunk never waits for a time slice of the client's or the server's compute, as a wire would not."""
    if os.geteuid() == 0 and shutil.which("chrt"):
        return ["chrt", "-f", "50"]
    return []


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def make_link(up_mbit: float, down_mbit: float) -> None:
    """Two namespaces joined by a veth pair, each end rate-limited on its way out."""
    drop_link()
    _run("ip", "netns", "add", CLIENT_NS)
    _run("ip", "netns", "add", SERVER_NS)
    _run("ip", "link", "add", "sfwan-vc", "type", "veth", "peer", "name", "sfwan-vs")
    for namespace, device, address, rate in ((CLIENT_NS, "sfwan-vc", CLIENT_IP, up_mbit),
                                             (SERVER_NS, "sfwan-vs", SERVER_IP, down_mbit)):
        _run("ip", "link", "set", device, "netns", namespace)
        inside = ("ip", "netns", "exec", namespace)
        _run(*inside, "ip", "addr", "add", f"{address}/24", "dev", device)
        _run(*inside, "ip", "link", "set", device, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        burst = max(16_000, int(rate * 1e6 / 8 * 0.002))  # two milliseconds of the rate, in bytes
        _run(*inside, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", f"{rate:g}mbit", "burst",
             str(burst), "latency", "200ms")


def drop_link() -> None:
    for namespace in (CLIENT_NS, SERVER_NS):
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def namespaces_work() -> str | None:
    """None when the link can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "no `ip` / `tc` on this machine"
    try:
        make_link(100.0, 100.0)
    except subprocess.CalledProcessError as error:
        return f"could not make the namespaces: {error.stderr.strip()}"
    finally:
        drop_link()
    return None


# ----------------------------------------------------------------------------------------- the proxy

async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while data := await reader.read(1 << 16):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((loop.time() + delay, b""))

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(pump(), deliver())


async def start_proxy(listen_port: int, target: str, delay_ms: float) -> asyncio.Server:
    """A TCP proxy on 127.0.0.1:``listen_port`` (0: any) to ``target`` that holds every chunk for half
    of ``delay_ms`` in each direction, in order."""
    host, port = target.rsplit(":", 1)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        half = delay_ms / 2000.0
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await asyncio.gather(_pipe(reader, upstream_writer, half), _pipe(upstream_reader, writer, half))

    return await asyncio.start_server(connection, "127.0.0.1", listen_port)


async def _proxy(listen_port: int, target: str, delay_ms: float) -> None:
    server = await start_proxy(listen_port, target, delay_ms)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------------------- the clients

def generation_prompts(args: argparse.Namespace, tokenizer, vocab_size: int) -> list:
    """The prompts (1, T) each: XSum passages in the model's chat template ("summarize"), cut to about
    ``--context`` tokens, or ``--context`` random token ids."""
    import torch

    if args.prompts == "random":
        generator = torch.Generator().manual_seed(0)
        return [torch.randint(3, min(1000, vocab_size), (1, args.context), generator=generator)
                for _ in range(args.prompt_count)]
    from splitfed.tasks import DATA_DIR, read_rows
    from splitfed.tasks.chat import prompt_ids, xsum_examples

    rows = read_rows(DATA_DIR / "xsum" / "test_first100.jsonl")[:args.prompt_count]
    return [torch.tensor([prompt_ids(tokenizer, xsum_examples(row, max_words=args.context * 2 // 3)[0])])
            for row in rows]


def generate_client(args: argparse.Namespace) -> None:
    """In the client's namespace: one client generates each prompt once per lookup setting (greedy,
    stopping at EOS); prints tokens/s, round trips and drafts per setting as JSON."""
    import torch

    from splitfed.client.remote_trunk import RemoteTrunk
    from splitfed.inference import SamplingSettings, SplitGenerator
    from splitfed.models import load_model, num_layers, split_model
    from splitfed.models.split import Partition
    from splitfed.security import Identity, PublicIdentity
    from splitfed.transport.connection import TrunkConnection

    torch.set_num_threads(1)
    keys = Path(args.keys)
    model, tokenizer = load_model(args.model)
    split = split_model(model, Partition(args.head, args.tail))
    connection = TrunkConnection(args.server, (keys / "tls-cert.pem").read_bytes())
    remote = RemoteTrunk(connection, Identity.load(keys / "gen.key"),
                         PublicIdentity.from_text((keys / "server.pub").read_text()))
    remote.connect((args.head, num_layers(model) - args.tail), int(model.config.hidden_size))
    prompts = generation_prompts(args, tokenizer, int(model.config.vocab_size))
    eos = None if args.prompts == "random" else tokenizer.eos_token_id
    results = {}
    for lookup in args.lookup:
        sampling = SamplingSettings(max_new_tokens=args.new_tokens, lookup_tokens=lookup,
                                    lookup_min_ngram=args.lookup_min_ngram)
        tokens = seconds = exchanges = 0.0
        drafted = accepted = 0
        for index, ids in enumerate([prompts[0], *prompts]):  # the first warms up
            generator = SplitGenerator(split.head, split.tail, remote)
            before, started = connection.exchanges, time.perf_counter()
            count = sum(1 for _ in generator.generate(ids, sampling=sampling, eos_token_id=eos))
            elapsed = time.perf_counter() - started
            generator.close()
            if index:
                tokens, seconds = tokens + count, seconds + elapsed
                exchanges += connection.exchanges - before - 1  # the prefill's
                drafted, accepted = drafted + generator.lookup.drafted, accepted + generator.lookup.accepted
        results[str(lookup)] = {"tokens_per_s": tokens / seconds, "tokens": tokens,
                                "round_trips_per_token": exchanges / tokens, "drafted": drafted,
                                "accepted": accepted}
    remote.close()
    print(json.dumps(results))


def local_generation(args: argparse.Namespace) -> dict[str, float]:
    """The whole model's ``generate`` on the same prompts, one thread: tokens/s without and with its
    own prompt lookup (``prompt_lookup_num_tokens``) for each ``--lookup`` setting."""
    import torch

    from splitfed.models import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model(args.model)
    prompts = generation_prompts(args, tokenizer, int(model.config.vocab_size))
    eos = None if args.prompts == "random" else tokenizer.eos_token_id
    results = {}
    for lookup in args.lookup:
        options = {"prompt_lookup_num_tokens": lookup} if lookup else {}
        tokens = seconds = 0.0
        for index, ids in enumerate([prompts[0], *prompts]):
            started = time.perf_counter()
            with torch.no_grad():
                output = model.generate(ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=eos,
                                        pad_token_id=0, **options)
            if index:
                tokens += output.shape[1] - ids.shape[1]
                seconds += time.perf_counter() - started
        results[str(lookup)] = tokens / seconds
    return results


# ------------------------------------------------------------------------------------------- a run

class Stage:
    """A server (and, on a WAN, the proxy) up for one profile; clients train and generate through it."""

    def __init__(self, args: argparse.Namespace, work: Path, profile: str | None, namespaces: bool) -> None:
        self.args, self.work, self.profile = args, work, profile
        self.wan = profile is not None and namespaces
        self.prefix = ["ip", "netns", "exec", CLIENT_NS] if self.wan else []
        server_prefix = ["ip", "netns", "exec", SERVER_NS] if self.wan else []
        listen = f"{SERVER_IP}:0" if self.wan else "127.0.0.1:0"
        port_file = work / "port"
        port_file.unlink(missing_ok=True)
        keys = work / "keys"
        self.processes: list[subprocess.Popen] = []
        self.processes.append(subprocess.Popen(
            [*server_prefix, sys.executable, "-m", "splitfed.cli", "serve", "--model", args.model, "--head",
             str(args.head), "--tail", str(args.tail), "--identity", str(keys / "server.key"), "--allowlist",
             str(keys / "allow"), "--tls-cert", str(keys / "tls-cert.pem"), "--tls-key",
             str(keys / "tls-key.pem"), "--listen", listen, "--port-file", str(port_file), "--output",
             str(work / "server-out"), "--set", "aggregation=plain"],
            stdout=(work / "server.log").open("w"), stderr=subprocess.STDOUT, **pinned(args, 1)))
        deadline = time.monotonic() + 240
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.processes[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {work / 'server.log'}")
            time.sleep(0.2)
        port = int(port_file.read_text())
        self.address = f"127.0.0.1:{port}"
        if profile is not None:
            target = f"{SERVER_IP}:{port}" if self.wan else f"127.0.0.1:{port}"
            self.processes.append(subprocess.Popen(
                [*self.prefix, *realtime(), sys.executable, __file__, "proxy", "--listen-port",
                 str(PROXY_PORT), "--target", target, "--delay-ms", str(self.args.links[profile][2])],
                stdout=subprocess.DEVNULL, stderr=(work / "proxy.log").open("w")))
            time.sleep(1.0)
            self.address = f"127.0.0.1:{PROXY_PORT}"

    def train(self, variant: str, name: str) -> dict:
        args, keys = self.args, self.work / "keys"
        codec, micro_batches = parse_variant(variant)
        output = self.work / f"{name}-out"
        config = {"model": args.model, "name": name, "identity": str(keys / f"{name}.key"),
                  "server": self.address, "server_key": str(keys / "server.pub"),
                  "server_cert": str(keys / "tls-cert.pem"),
                  "partition": {"head": args.head, "tail": args.tail},
                  "steps": args.steps, "rounds": 1, "fedavg": False, "batch_size": args.batch_size,
                  "wire": {"forward": codec, "backward": codec}, "micro_batches": micro_batches,
                  "data": {"task": "cb", "limit": 64, "max_length": args.max_length}, "output": str(output)}
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run([*self.prefix, sys.executable, "-m", "splitfed.cli", "train", "--config", str(path)],
                       check=True, capture_output=True, timeout=1800, **pinned(args, 0))
        return json.loads((output / "summary.json").read_text())

    def generate(self) -> dict:
        args = self.args
        result = subprocess.run(
            [*self.prefix, sys.executable, __file__, "generate", "--server", self.address, "--keys",
             str(self.work / "keys"), "--model", args.model, "--head", str(args.head), "--tail",
             str(args.tail), "--context", str(args.context), "--new-tokens", str(args.new_tokens),
             "--prompts", args.prompts, "--prompt-count", str(args.prompt_count),
             "--lookup", *map(str, args.lookup), "--lookup-min-ngram", str(args.lookup_min_ngram)],
            check=True, capture_output=True, text=True, timeout=1800, **pinned(args, 0))
        return json.loads(result.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _keys(work: Path, names: list[str]) -> None:
    from splitfed.security import create_identity_files, create_server_files

    keys = work / "keys"
    create_server_files(keys, ["localhost"], ["127.0.0.1", SERVER_IP])
    (keys / "allow").mkdir()
    for name in names:
        create_identity_files(keys, name)
        (keys / "allow" / f"{name}.pub").write_bytes((keys / f"{name}.pub").read_bytes())


def _per_step(summary: dict) -> dict:
    steps = max(1, summary["steps"])
    return {"seconds_per_step": summary["seconds"] / steps, "tokens_per_s": summary["tokens_per_second"],
            "bytes_up_per_step": summary["bytes_sent"] / steps,
            "bytes_down_per_step": summary["bytes_received"] / steps}


def parse_variant(variant: str) -> tuple[str, int]:
    """``CODEC[@M]`` as (codec, micro-batches per step)."""
    codec, _, micro = variant.partition("@")
    if micro and (not micro.isdigit() or int(micro) < 1):
        raise argparse.ArgumentTypeError(f"variant {variant!r}: after '@' comes a number of micro-batches")
    return codec, int(micro or 1)


def links(args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    """The links to run: the chosen profiles, then the sweep's symmetric ones, by name."""
    chosen = {name: PROFILES[name] for name in args.profiles}
    chosen |= {f"{rate:g} Mbit/s": (rate, rate, args.sweep_rtt_ms) for rate in args.sweep_mbit}
    return chosen


def floor_seconds(loopback: dict, measured: dict, profile: str,
                  link: tuple[float, float, float] | None = None) -> float:
    """Loopback time per step + the step's bytes over the link's rates + two round trips."""
    up, down, rtt = link or PROFILES[profile]
    return (loopback["seconds_per_step"] + measured["bytes_up_per_step"] * 8 / (up * 1e6)
            + measured["bytes_down_per_step"] * 8 / (down * 1e6) + 2 * rtt / 1000)


def median_cycles(cycles: list[dict], locals_: list[dict] | None = None,
                  links_: dict | None = None) -> dict:
    """Each profile's figures as medians over the cycles. Training: ``over_loopback`` is the median of
    each cycle's ratio to that cycle's loopback (the ratios kept too). Generation, given each cycle's
    local tokens/s (``locals_``) and the links: ``over_bound`` is the median of each cycle's ratio to
    min(that cycle's local, 1 / RTT)."""
    from statistics import median

    rows: dict = {}
    for label, first in cycles[0].items():
        rows[label] = {key: value for key, value in first.items() if key not in ("training", "generation")}
        rows[label]["training"] = {}
        for variant in first["training"]:
            runs = [cycle[label]["training"][variant] for cycle in cycles]
            merged = {key: median(run[key] for run in runs) for key in runs[0]}
            if label != "loopback":
                ratios = [cycle[label]["training"][variant]["tokens_per_s"]
                          / cycle["loopback"]["training"][variant]["tokens_per_s"] for cycle in cycles]
                merged["over_loopback_cycles"] = ratios
                merged["over_loopback"] = median(ratios)
            rows[label]["training"][variant] = merged
        if "generation" not in first:
            continue
        rows[label]["generation"] = {}
        for lookup in first["generation"]:
            runs = [cycle[label]["generation"][lookup] for cycle in cycles]
            merged = {key: median(run[key] for run in runs) for key in runs[0]}
            if label != "loopback" and locals_ is not None and links_ is not None:
                rtt = links_[label][2] / 1000
                ratios = [run["tokens_per_s"] / min(local["0"], 1 / rtt)
                          for run, local in zip(runs, locals_, strict=True)]
                merged["over_bound_cycles"] = ratios
                merged["over_bound"] = median(ratios)
            rows[label]["generation"][lookup] = merged
    return rows


def benchmark(args: argparse.Namespace) -> dict:
    why_not = namespaces_work()
    if why_not:
        print(f"namespaces unavailable ({why_not}): the proxy alone adds the delay, no rate limit")
    work = Path(tempfile.mkdtemp(prefix="splitfed-wan-"))
    names = [f"t{index}" for index in range(len(args.codecs))]
    _keys(work, [*names, "gen"])
    args.links = links(args)
    results: dict = {"model": args.model, "steps": args.steps, "repeats": args.repeats,
                     "prompts": args.prompts, "prompt_count": args.prompt_count,
                     "new_tokens": args.new_tokens, "lookup": args.lookup,
                     "lookup_min_ngram": args.lookup_min_ngram,
                     "batch_size": args.batch_size, "pin": args.pin,
                     "max_length": args.max_length, "codecs": args.codecs, "profiles": {},
                     "links": args.links, "namespaces": why_not is None, "why_no_namespaces": why_not,
                     "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    locals_: list[dict] = []
    cycles = []
    for cycle in range(args.repeats):  # loopback, then each link, again: the machine's drift hits all
        rows: dict = {}
        if args.generation:  # local generate in every cycle: the yardstick drifts with the machine
            locals_.append(local_generation(args))
        for profile in [None, *args.links]:
            label = profile or "loopback"
            if profile is not None and why_not is None:
                make_link(*args.links[profile][:2])
            stage = Stage(args, work, profile, why_not is None)
            try:
                row: dict = {"training": {}}
                for variant, name in zip(args.codecs if args.training else [], names, strict=False):
                    row["training"][variant] = _per_step(stage.train(variant, name))
                if args.generation:
                    row["generation"] = stage.generate()
            finally:
                stage.close()
                if profile is not None:
                    drop_link()
            rows[label] = row
            print(f"cycle {cycle + 1}/{args.repeats}", label, json.dumps(row), flush=True)
        cycles.append(rows)
    results["profiles"] = cycles[0] if len(cycles) == 1 else median_cycles(cycles, locals_, args.links)
    if len(cycles) > 1:
        results["cycles"] = cycles
    if args.generation:
        from statistics import median

        results["local_generation_tokens_per_s"] = {key: median(local[key] for local in locals_)
                                                     for key in locals_[0]}
        results["local_generation_cycles"] = locals_
    loop = results["profiles"]["loopback"]
    for profile, link in args.links.items():
        row = results["profiles"][profile]
        rtt = link[2] / 1000
        for codec, measured in row["training"].items():
            base = loop["training"][codec]
            measured.setdefault("over_loopback", measured["tokens_per_s"] / base["tokens_per_s"])
            measured["floor_seconds_per_step"] = floor_seconds(base, measured, profile, link)
            measured["over_floor"] = measured["floor_seconds_per_step"] / measured["seconds_per_step"]
        if not args.generation:
            continue
        for lookup, measured in row["generation"].items():
            local = results["local_generation_tokens_per_s"]
            bound = min(local["0"], 1 / rtt)
            measured["bound_tokens_per_s"] = bound  # the yardstick: min(local, 1 / RTT)
            measured.setdefault("over_bound", measured["tokens_per_s"] / bound)
            measured["over_local_same_lookup"] = measured["tokens_per_s"] / local[lookup]
            measured["single_stream_floor"] = 1 / (1 / local["0"] + rtt)  # one token per round trip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    proxy = sub.add_parser("proxy", help="(internal) the delaying TCP proxy")
    proxy.add_argument("--listen-port", type=int, required=True)
    proxy.add_argument("--target", required=True)
    proxy.add_argument("--delay-ms", type=float, required=True)
    gen = sub.add_parser("generate", help="(internal) one generating client")
    for command in (parser, gen):
        command.add_argument("--model", default="tiny-llama")
        command.add_argument("--head", type=int, default=2)
        command.add_argument("--tail", type=int, default=2)
        command.add_argument("--context", type=int, default=128, help="prompt tokens before generating")
        command.add_argument("--new-tokens", type=int, default=32, help="tokens per prompt at most")
        command.add_argument("--prompts", choices=["xsum", "random"], default="xsum",
                             help="generation prompts: XSum passages to summarize (stopping at EOS), or "
                                  "random token ids (no EOS)")
        command.add_argument("--prompt-count", type=int, default=4, help="prompts timed per setting")
        command.add_argument("--lookup", type=int, nargs="+", default=[0, 8],
                             help="prompt-lookup draft sizes to time (0 = one token per round trip)")
        command.add_argument("--lookup-min-ngram", type=int, default=2,
                             help="the shortest n-gram that makes a draft (sampling.lookup_min_ngram)")
    gen.add_argument("--server", required=True)
    gen.add_argument("--keys", required=True)
    parser.add_argument("--profiles", nargs="*", choices=list(PROFILES), default=list(PROFILES))
    parser.add_argument("--codecs", nargs="+", default=["float32", "int8-blockwise"],
                        help="training variants: CODEC or CODEC@M (M pipelined micro-batches per step)")
    parser.add_argument("--sweep-mbit", nargs="*", type=float, default=[],
                        help="also symmetric links of these rates (Mbit/s), plotted against bandwidth")
    parser.add_argument("--sweep-rtt-ms", type=float, default=20.0, help="the sweep's round-trip time")
    parser.add_argument("--pin", action="store_true", help="server on CPU 1, clients on CPU 0, one thread "
                                                           "each (two machines; needs 2 CPUs)")
    parser.add_argument("--no-generation", dest="generation", action="store_false",
                        help="training only (the sweep's plot needs no generation)")
    parser.add_argument("--no-training", dest="training", action="store_false",
                        help="generation only")
    parser.add_argument("--steps", type=int, default=8, help="training steps per client")
    parser.add_argument("--repeats", type=int, default=1, help="run loopback and every link this many "
                        "times, alternating; report medians and the median of each cycle's ratio")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    for variant in getattr(args, "codecs", []):
        try:
            parse_variant(variant)
        except argparse.ArgumentTypeError as error:
            parser.error(str(error))
    if args.command == "proxy":
        asyncio.run(_proxy(args.listen_port, args.target, args.delay_ms))
        return
    if args.command == "generate":
        generate_client(args)
        return
    results = benchmark(args)
    output = args.output or Path(f"benchmarks/results/wan_{args.model}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    if args.training and any(p in PROFILES for p in results["profiles"]):
        _plot(results, output.with_suffix(".png"))
    if args.generation and len(results["profiles"]) > 1:
        name = output.stem + "_generation.png" if args.training else output.stem + ".png"
        plot_generation(results, output.with_name(name))
    if args.sweep_mbit and args.training:
        plot_sweep(results, output.with_name(output.stem + "_sweep.png"))
    print(f"saved {output}")


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    profiles = [p for p in results["profiles"] if p in PROFILES]
    for offset, codec in enumerate(results["codecs"]):
        ratios = [results["profiles"][p]["training"][codec]["over_loopback"] for p in profiles]
        floors = [results["profiles"]["loopback"]["training"][codec]["seconds_per_step"]
                  / results["profiles"][p]["training"][codec]["floor_seconds_per_step"] for p in profiles]
        xs = [i + offset * 0.35 for i in range(len(profiles))]
        axis.bar(xs, ratios, 0.35, label=f"{codec}: measured")
        axis.scatter(xs, floors, marker="_", s=400, color="black",
                     label="link floor" if offset == 0 else None)
    axis.set_xticks([i + 0.175 for i in range(len(profiles))], profiles)
    axis.set_ylabel("training throughput / loopback")
    axis.axhline(1.0, color="grey", linewidth=0.5)
    axis.legend(fontsize=8)
    axis.set_title(f"{results['model']}: split training over emulated links")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_sweep(results: dict, path: Path) -> None:
    """Training tokens/s against the link's bandwidth, one colour per variant: measured (solid), the
    link's floor (dashed) and loopback (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [(link[0], name) for name, link in results["links"].items() if name not in PROFILES]
    sweep.sort()
    rates = [rate for rate, _ in sweep]
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for index, variant in enumerate(results["codecs"]):
        colour = f"C{index}"
        rows = [results["profiles"][name]["training"][variant] for _, name in sweep]
        tokens_per_step = [r["tokens_per_s"] * r["seconds_per_step"] for r in rows]
        axis.plot(rates, [r["tokens_per_s"] for r in rows], "o-", color=colour, label=variant)
        floors = [t / r["floor_seconds_per_step"] for t, r in zip(tokens_per_step, rows, strict=True)]
        axis.plot(rates, floors, "--", color=colour, linewidth=1)
        axis.axhline(results["profiles"]["loopback"]["training"][variant]["tokens_per_s"], color=colour,
                     linestyle=":", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel(f"link bandwidth, Mbit/s each way (RTT {results['links'][sweep[0][1]][2]:g} ms)")
    axis.set_ylabel("training tokens/s")
    axis.set_title(f"{results['model']}: training over a link (dashed: floor, dotted: loopback)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_generation(results: dict, path: Path) -> None:
    """Generation tokens/s against the round-trip time: one line per lookup setting, with 1 / RTT,
    local ``generate`` and one token per round trip's floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted((0.0 if name == "loopback" else results["links"][name][2], name)
                   for name in results["profiles"])
    rtts = [rtt for rtt, _ in names]
    local = results["local_generation_tokens_per_s"]
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for index, lookup in enumerate(results["lookup"]):
        label = "one token per round trip" if lookup == 0 else f"prompt lookup, up to {lookup} drafts"
        measured = [results["profiles"][name]["generation"][str(lookup)]["tokens_per_s"] for _, name in names]
        axis.plot(rtts, measured, "o-", color=f"C{index}", label=f"split: {label}")
    axis.plot(rtts[1:], [1000 / rtt for rtt in rtts[1:]], ":", color="grey", label="1 / RTT")
    axis.axhline(local["0"], color="black", linestyle="--", linewidth=1, label="local generate")
    axis.plot(rtts, [1 / (1 / local["0"] + rtt / 1000) for rtt in rtts], "--", color="C0", linewidth=1,
              label="floor of one token per round trip")
    axis.set_ylim(0, max(local.values()) * 1.6)
    axis.set_xlabel("round-trip time, ms (0: loopback)")
    axis.set_ylabel("generation tokens/s (one client)")
    axis.set_title(f"{results['model']}: split generation over a link ({results['prompts']} prompts)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
