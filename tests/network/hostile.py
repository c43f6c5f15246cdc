"""Hostile peers against a live `splitfed serve` on 127.0.0.1, for the regression suite and the abuse
benchmark: each probe runs in a few threads, every loop bounded in count and time, and records the
gRPC status of every refusal it gets."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import torch

from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.security import ClientHandshake, Identity, PublicIdentity, SecureChannel, ServerHello
from splitfed.transport import encode_tensor, mask_to_lengths, pb
from splitfed.transport import splitfed_pb2_grpc as pb_grpc
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.envelope import to_wire
from splitfed.transport.errors import RemoteError

CHUNK = 4 * 1024 * 1024 - 1024
POSITIONS = 1024  # tiny-llama's max_position_embeddings
RPCS = ("Handshake", "Step", "Exchange", "Close")


@dataclass
class Probe:
    """One attack: ``workers`` threads each running ``attempt`` until told to stop."""

    name: str
    workers: int
    attempt: Callable[[threading.Event], None]
    statuses: Counter = field(default_factory=Counter)


def _training_forward(step: int) -> pb.ForwardRequest:
    """A training forward of 2 x 12 positions of tiny-llama's width: the server opens a step for it."""
    lengths = mask_to_lengths(torch.ones(2, 12, dtype=torch.long))
    return pb.ForwardRequest(step=step, hidden=encode_tensor(torch.randn(2, 12, 64)), lengths=lengths,
                             train=True)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Attacker:
    """The probes of issue 22 against ``address``; ``certificate`` is the server's public TLS one."""

    def __init__(self, address: str, certificate: bytes, server_key: PublicIdentity,
                 enrolled: Identity | None = None) -> None:
        self.address, self.certificate = address, certificate
        self.server_key, self.enrolled = server_key, enrolled

    def _stub(self) -> tuple[grpc.Channel, pb_grpc.TrunkStub]:
        channel = grpc.secure_channel(self.address, grpc.ssl_channel_credentials(self.certificate))
        return channel, pb_grpc.TrunkStub(channel)

    def _run(self, probe: Probe, call: Callable[[pb_grpc.TrunkStub, threading.Event], None]) -> Callable:
        def attempt(stop: threading.Event) -> None:
            channel, stub = self._stub()
            try:
                for _ in range(100_000):  # bounded; the time bound is ``stop``
                    if stop.is_set():
                        return
                    try:
                        call(stub, stop)
                        probe.statuses["OK"] += 1
                    except grpc.RpcError as error:
                        probe.statuses[error.code().name] += 1
                    except RemoteError as error:  # refused while opening its session
                        probe.statuses[error.status] += 1
            finally:
                channel.close()
        return attempt

    # -- the probes ---------------------------------------------------------------------------------
    def idle_streams(self, workers: int = 20) -> Probe:
        """Open ``Step`` streams and send nothing, reopening at once when refused or cancelled."""
        probe = Probe("idle streams", workers, lambda stop: None)

        def call(stub, stop: threading.Event) -> None:
            def nothing() -> Iterator[pb.Sealed]:
                stop.wait(60)
                return
                yield  # noqa: B901 - a generator that never yields

            list(stub.Step(nothing(), timeout=30))
        probe.attempt = self._run(probe, call)
        return probe

    def big_unknown_session(self, workers: int = 8, chunks: int = 60) -> Probe:
        """4 MiB chunks under a made-up session id, a chunk count larger than sent."""
        probe = Probe("4 MiB chunks, unknown session", workers, lambda stop: None)
        payload = os.urandom(CHUNK)

        def call(stub, stop: threading.Event) -> None:
            def chunks_of() -> Iterator[pb.Sealed]:
                for index in range(chunks):
                    if stop.is_set():
                        return
                    yield pb.Sealed(session_id=os.urandom(16), kind="forward", step=1, counter=0,
                                    ciphertext=payload, chunk_index=index, chunk_count=chunks + 40)
            list(stub.Step(chunks_of(), timeout=30))
        probe.attempt = self._run(probe, call)
        return probe

    def slow_drip(self, workers: int = 6, gap_s: float = 1.0) -> Probe:
        """Chunks of a message a second apart, under a made-up session id and under a real one."""
        probe = Probe("slow-drip chunks", workers, lambda stop: None)

        def call(stub, stop: threading.Event) -> None:
            session = self._session()[1].session_id if self.enrolled is not None else os.urandom(16)

            def drip() -> Iterator[pb.Sealed]:
                for index in range(100):
                    if stop.is_set():
                        return
                    yield pb.Sealed(session_id=session, kind="forward", step=1, counter=0,
                                    ciphertext=b"x" * 64, chunk_index=index, chunk_count=100)
                    stop.wait(gap_s)
            list(stub.Step(drip(), timeout=120))
        probe.attempt = self._run(probe, call)
        return probe

    def huge_chunk_count(self, workers: int = 4) -> Probe:
        """One small chunk declaring 2**31 chunks, under a real session."""
        probe = Probe("huge declared chunk count", workers, lambda stop: None)

        def call(stub, stop: threading.Event) -> None:
            session = self._session()[1].session_id
            message = pb.Sealed(session_id=session, kind="forward", step=1, counter=0, ciphertext=b"x" * 64,
                                chunk_index=0, chunk_count=2**31 - 1)
            list(stub.Step(iter([message]), timeout=10))
        probe.attempt = self._run(probe, call)
        return probe

    def handshake_flood(self, workers: int = 8) -> Probe:
        """Handshakes as fast as they go: from an identity the server does not know."""
        probe = Probe("handshake flood", workers, lambda stop: None)
        stranger = Identity.generate("stranger")

        def call(stub, stop: threading.Event) -> None:
            hello = ClientHandshake(stranger, self.server_key).hello().to_bytes()
            stub.Handshake(pb.Hello(client_hello=hello), timeout=10)
        probe.attempt = self._run(probe, call)
        return probe

    def many_sessions(self, workers: int = 4) -> Probe:
        """Sessions opened again and again with one enrolled key (each replaces the last)."""
        probe = Probe("many sessions, one enrolled key", workers, lambda stop: None)

        def call(stub, stop: threading.Event) -> None:
            hello = ClientHandshake(self.enrolled, self.server_key).hello().to_bytes()
            stub.Handshake(pb.Hello(client_hello=hello), timeout=10)
        probe.attempt = self._run(probe, call)
        return probe

    def step_flood(self, workers: int = 6) -> Probe:
        """An enrolled client sending inference forwards as fast as it can."""
        probe = Probe("step flood from an enrolled client", workers, lambda stop: None)

        def call(stub, stop: threading.Event) -> None:
            connection, channel = self._session()
            try:
                for step in range(1, 200):
                    if stop.is_set():
                        return
                    mask = torch.ones(1, 4, dtype=torch.long)
                    request = pb.ForwardRequest(step=step, hidden=encode_tensor(torch.randn(1, 4, 64)),
                                                lengths=mask_to_lengths(mask), train=False)
                    sealed = channel.seal("forward", step, request.SerializeToString())
                    stub.Exchange(to_wire(sealed), timeout=10)
                    probe.statuses["OK"] += 1
            finally:
                connection.close()
        probe.attempt = self._run(probe, call)
        return probe

    # -- enrolled attackers (issue 40): one session of the enrolled key, its requests one at a time ------
    def _enrolled(self, probe: Probe, body: Callable[[TrunkConnection, SecureChannel, threading.Event], None],
                  timeout_s: float = 10.0) -> Callable:
        """``attempt`` for one enrolled session running ``body``; a refusal is counted as "STATUS code",
        and a new session is opened when it was refused (bounded in count; the time bound is ``stop``)."""
        def attempt(stop: threading.Event) -> None:
            for _ in range(1000):
                if stop.is_set():
                    return
                try:
                    connection, channel = self._session(timeout_s)
                except RemoteError as error:
                    probe.statuses[f"{error.status} {error.code}".strip()] += 1
                    stop.wait(0.1)
                    continue
                try:
                    body(connection, channel, stop)
                except (RuntimeError, ValueError) as error:  # a reply it could not open: count, go on
                    probe.statuses[type(error).__name__] += 1
                finally:
                    connection.close()
        return attempt

    @staticmethod
    def _ask(probe: Probe, connection: TrunkConnection, channel: SecureChannel, kind: str, step: int,
             request) -> bool:
        """Send one request, count its outcome; True when it was served."""
        try:
            channel.open(connection.exchange(channel.seal(kind, step, request.SerializeToString())))
        except RemoteError as error:
            probe.statuses[f"{error.status} {error.code}".strip()] += 1
            return False
        probe.statuses["OK"] += 1
        return True

    def _poisoned(self, name: str, gradient: Callable[[tuple[int, ...]], torch.Tensor]) -> Probe:
        """Training forwards, each followed by a backward carrying ``gradient`` (at most 2,000 steps)."""
        probe = Probe(name, 1, lambda stop: None)

        def body(connection: TrunkConnection, channel: SecureChannel, stop: threading.Event) -> None:
            for step in range(1, 2000):
                if stop.is_set():
                    return
                request = _training_forward(step)
                if not self._ask(probe, connection, channel, "forward", step, request):
                    stop.wait(0.5)  # suspended, slowed or busy: ask again a little later
                    continue
                backward = pb.BackwardRequest(step=step, grad=encode_tensor(gradient((2, 12, 64))))
                self._ask(probe, connection, channel, "backward", step, backward)
        probe.attempt = self._enrolled(probe, body)
        return probe

    def poison_3e38(self) -> Probe:
        """Backwards whose every gradient element is 3e38 (float32's largest is 3.4e38)."""
        return self._poisoned("poisoned backwards, 3e38", lambda shape: torch.full(shape, 3e38))

    def poison_1e30(self) -> Probe:
        """Backwards whose every gradient element is 1e30 (finite, squares overflow)."""
        return self._poisoned("poisoned backwards, 1e30", lambda shape: torch.full(shape, 1e30))

    def poison_norm_1e5(self) -> Probe:
        """Finite backwards of norm 1e5, ~1e4 x an honest one (AdamW's second moment would freeze)."""
        def gradient(shape: tuple[int, ...]) -> torch.Tensor:
            grad = torch.randn(shape)
            return grad * (1e5 / grad.norm())
        return self._poisoned("poisoned backwards, norm 1e5", gradient)

    def held_steps(self) -> Probe:
        """Training forwards whose backward never comes, one after another (at most 2,000)."""
        probe = Probe("held steps (forward, never the backward)", 1, lambda stop: None)

        def body(connection: TrunkConnection, channel: SecureChannel, stop: threading.Event) -> None:
            for step in range(1, 2000):
                if stop.is_set():
                    return
                request = _training_forward(step)
                if not self._ask(probe, connection, channel, "forward", step, request):
                    stop.wait(0.05)  # its step is still open, it is slowed or suspended: ask again
        probe.attempt = self._enrolled(probe, body, timeout_s=30.0)
        return probe

    def garbage_bytes(self) -> Probe:
        """Bytes that are no protobuf message on every RPC (raw channel methods, no serializer), in turn;
        statuses are counted as "STATUS Method"."""
        probe = Probe("garbage bytes on every RPC", 1, lambda stop: None)
        garbage = [b"\x0a\xff\xff\xff\x7f", b"\xff" * 64, b"\x08"]

        def attempt(stop: threading.Event) -> None:
            channel = grpc.secure_channel(self.address, grpc.ssl_channel_credentials(self.certificate))
            try:
                for index in range(100_000):
                    if stop.is_set():
                        return
                    method = RPCS[index % len(RPCS)]
                    payload = garbage[(index // len(RPCS)) % len(garbage)]
                    path = f"/splitfed.v1.Trunk/{method}"
                    try:
                        if method == "Step":
                            list(channel.stream_stream(path)(iter([payload]), timeout=10))
                        else:
                            channel.unary_unary(path)(payload, timeout=10)
                        probe.statuses[f"OK {method}"] += 1
                    except grpc.RpcError as error:
                        probe.statuses[f"{error.code().name} {method}"] += 1
            finally:
                channel.close()
        probe.attempt = attempt
        return probe

    def long_sequences(self) -> Probe:
        """Hidden states of 1,025 and 2,048 positions (tiny-llama has 1,024) for training forward, eval
        forward and a generation prefill, in turn."""
        probe = Probe("sequences past the model's positions", 1, lambda stop: None)

        def body(connection: TrunkConnection, channel: SecureChannel, stop: threading.Event) -> None:
            for step in range(1, 2000):
                if stop.is_set():
                    return
                kind = ("train", "eval", "generate")[step % 3]
                length = (POSITIONS + 1, 2 * POSITIONS)[(step // 3) % 2]
                hidden = encode_tensor(torch.randn(1, length, 64))
                lengths = mask_to_lengths(torch.ones(1, length, dtype=torch.long))
                if kind == "generate":
                    request = pb.GenerateRequest(step=step, stream=0, hidden=hidden, lengths=lengths,
                                                 use_cache=True)
                else:
                    request = pb.ForwardRequest(step=step, hidden=hidden, lengths=lengths,
                                                train=kind == "train")
                self._ask(probe, connection, channel, "generate" if kind == "generate" else "forward", step,
                          request)
        probe.attempt = self._enrolled(probe, body)
        return probe

    def generation_flood(self, streams: int = 8, rows: int = 64) -> Probe:
        """Generation prefills of ``rows`` x 1,024 positions on ``streams`` streams, round and round
        (each holds a trunk cache; a prefill's working memory is many times its cache)."""
        probe = Probe(f"generation flood, {streams} streams of {rows} x {POSITIONS}", 1, lambda stop: None)
        hidden = encode_tensor(torch.randn(rows, POSITIONS, 64))
        lengths = mask_to_lengths(torch.ones(rows, POSITIONS, dtype=torch.long))

        def body(connection: TrunkConnection, channel: SecureChannel, stop: threading.Event) -> None:
            for step in range(1, 2000):
                if stop.is_set():
                    return
                request = pb.GenerateRequest(step=step, stream=step % streams, hidden=hidden, lengths=lengths,
                                             use_cache=True)
                if not self._ask(probe, connection, channel, "generate", step, request):
                    stop.wait(0.1)
        probe.attempt = self._enrolled(probe, body, timeout_s=60.0)
        return probe

    def _session(self, timeout_s: float = 10.0) -> tuple[TrunkConnection, SecureChannel]:
        connection = TrunkConnection(self.address, self.certificate, timeout_s=timeout_s)
        handshake = ClientHandshake(self.enrolled, self.server_key)
        reply = connection.handshake(handshake.hello().to_bytes())
        return connection, SecureChannel(handshake.finish(ServerHello.from_bytes(reply.server_hello)))


def honest_client(address: str, certificate: bytes, identity: Identity, server_key: PublicIdentity,
                  blocks: int = 4) -> SplitClient:
    """Alice, training tiny-llama split 1/2/1 against the server."""
    model, _ = load_model("tiny-llama")
    split = split_model(model, Partition(1, 1))
    init_adapter(split.head, LoraSpec(r=4), 0)
    init_adapter(split.tail, LoraSpec(r=4), 0)
    remote = RemoteTrunk(TrunkConnection(address, certificate, timeout_s=30), identity, server_key)
    remote.connect((1, blocks - 1), 64)
    return SplitClient(identity.name, split.head, split.tail, remote)


def steps_per_second(client: SplitClient, batch: dict, seconds: float, max_steps: int = 10_000) -> float:
    """Honest training steps a second over ``seconds`` (busy refusals are retried after 50 ms)."""
    from splitfed.transport.errors import RemoteError

    started, steps = time.monotonic(), 0
    while time.monotonic() - started < seconds and steps < max_steps:
        try:
            client.train_step(batch)
            steps += 1
        except RemoteError as error:
            if error.status not in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"):
                raise
            time.sleep(0.05)
    return steps / (time.monotonic() - started)


def _attack_worker(address: str, certificate: bytes, server_key: str, enrolled_key: str, requests,
                   results) -> None:
    """Child process: run the probes it is sent, one at a time, at low priority (on a real network the
    attacker's CPU is not the server's; here they share two cores), reporting each one's statuses."""
    os.nice(19)
    def identity(key: str) -> Identity:
        return Identity.load(Path(key), name=Path(key).stem)

    attacker = Attacker(address, certificate, PublicIdentity.from_text(server_key), identity(enrolled_key))
    results.put("ready")
    for _ in range(100):  # bounded: one request per probe, None ends
        request = requests.get(timeout=600)
        if request is None:
            return
        name, seconds, key = request  # key: the enrolled identity this probe uses (None: the first one)
        attacker.enrolled = identity(key or enrolled_key)
        chosen: Probe = getattr(attacker, name)()
        stop = threading.Event()
        threads = [threading.Thread(target=chosen.attempt, args=(stop,), daemon=True)
                   for _ in range(chosen.workers)]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        results.put(dict(chosen.statuses))


class AttackProcess:
    """The attacker in a process of its own, started once, running probes on request."""

    def __init__(self, address: str, certificate: bytes, server_key: str, enrolled_key: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.requests, self.results = context.Queue(), context.Queue()
        self.process = context.Process(target=_attack_worker, daemon=True, args=(
            address, certificate, server_key, str(enrolled_key), self.requests, self.results))
        self.process.start()
        if self.results.get(timeout=120) != "ready":
            raise RuntimeError("the attacker process did not start")

    def close(self) -> None:
        self.requests.put(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def run_probe(attacker: AttackProcess, probe: str, seconds: float, honest: Callable[[], float],
              server_pid: int, enrolled: Path | None = None) -> tuple[float, float, dict]:
    """Run ``probe`` for ``seconds`` plus the honest measurement ``honest()`` (as the enrolled identity
    whose key is ``enrolled``, else the attacker's first); returns (honest rate, peak server RSS MiB,
    the probe's statuses)."""
    peak = [rss_mib(server_pid)]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            peak[0] = max(peak[0], rss_mib(server_pid))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    attacker.requests.put((probe, seconds + 1.0, None if enrolled is None else str(enrolled)))
    try:
        time.sleep(1.0)  # the attack is under way before the honest client is timed
        rate = honest()
        statuses = attacker.results.get(timeout=90)
    finally:
        sampling.set()
        sampler.join(timeout=5)
    return rate, peak[0], statuses


def hostile_deployment(root: Path, server_extra: str = "", attackers: tuple[str, ...] = ()):
    """Keys for the server, honest "alice" and enrolled "mallory" (and ``attackers``, enrolled too: a
    suspension belongs to a name) under ``root``, and a started `splitfed serve` (tiny-llama, TLS on
    127.0.0.1): (deployment, server process)."""
    from splitfed.security import create_identity_files, create_server_files
    from tests.network.conftest import Deployment, splitfed

    keys = root / "keys"
    create_server_files(keys, ["localhost"], ["127.0.0.1"])
    (root / "allow").mkdir()
    for name in ("alice", "mallory", *attackers):
        create_identity_files(keys, name)
        (root / "allow" / f"{name}.pub").write_bytes((keys / f"{name}.pub").read_bytes())
    deployment = Deployment(root, keys)
    server = splitfed("serve", "--config", str(deployment.server_config(server_extra)),
                      log=root / "server.log")
    return deployment, server


@dataclass
class LiveServer:
    """A started hostile deployment: the server process, how to reach it, and honest alice, warmed up."""

    root: Path
    keys: Path
    server: Any
    address: str
    certificate: bytes
    server_key: PublicIdentity
    alice: SplitClient
    batch: dict


@contextlib.contextmanager
def live_server(root: Path, server_extra: str = "", attackers: tuple[str, ...] = ()) -> Iterator[LiveServer]:
    """``hostile_deployment`` started and reachable, with alice trained for a second (the server measures
    its step time); the server is killed on exit."""
    from tests.conftest import make_batch
    from tests.network.conftest import wait_for_port

    deployment, server = hostile_deployment(root, server_extra, attackers)
    keys = deployment.keys
    try:
        port = wait_for_port(root / "port", server)
        address = f"127.0.0.1:{port}"
        certificate = (keys / "tls-cert.pem").read_bytes()
        server_key = PublicIdentity.from_text((keys / "server.pub").read_text())
        alice = honest_client(address, certificate, Identity.load(keys / "alice.key", name="alice"),
                              server_key)
        batch = make_batch(2, 12)
        steps_per_second(alice, batch, 1.0)  # warm up
        yield LiveServer(root, keys, server, address, certificate, server_key, alice, batch)
    finally:
        server.kill()
        server.wait(timeout=30)
