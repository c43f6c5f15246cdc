"""A client process: head and tail on private data, the trunk on the server, over an encrypted session."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from splitfed.checkpoint import CheckpointError, CheckpointStore
from splitfed.client.checkpointing import RunState, client_checkpoint, restore_client
from splitfed.client.link import ServerLink
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.client.secure_aggregation import secure_average
from splitfed.client.self_check import AverageCheck, hold_out
from splitfed.client.settings import ClientSettings, SelfCheckSettings
from splitfed.client.split_client import SplitClient
from splitfed.client.step_hooks import LogMetrics, RoundsAndCheckpoints, ShowProgress
from splitfed.client.training_loop import LoopOutcome, train_steps
from splitfed.client.two_part_client import client_class
from splitfed.client.wire import error_feedback, wire_codecs
from splitfed.colocation import spin_wait_hint
from splitfed.models import SplitModel, init_adapter, save_adapter
from splitfed.models import hidden_size as hidden_size_of
from splitfed.models.base_identity import base_id
from splitfed.models.devices import place_client_parts, resolve_device
from splitfed.models.party import load_client_parts, load_parts
from splitfed.models.placement import DTYPES
from splitfed.observability import MetricsWriter, peak_rss_bytes, plot_metrics, progress_bar
from splitfed.privacy import SplitDefense, format_epsilon, save_cut
from splitfed.privacy.public import warm_up_on_public_text
from splitfed.security import Identity, PublicIdentity
from splitfed.tasks import collate
from splitfed.training.data import shuffled_batches
from splitfed.training.task_data import load_client_examples, read_client_examples
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError

log = logging.getLogger(__name__)


def connect(settings: ClientSettings, expected_layers: tuple[int, int], hidden_size: int,
            model_type: str | None = None, base_id: str | None = None) -> RemoteTrunk:
    """Open an authenticated, encrypted session with the trunk server (refused when its model,
    partition range, layout or codecs do not fit this client's)."""
    identity = Identity.load(settings.identity, name=settings.name)
    server_key = PublicIdentity.from_text(settings.server_key.read_text())
    certificate = settings.server_cert.read_bytes() if settings.server_cert is not None else None
    mutual = None
    if settings.tls_cert is not None or settings.tls_key is not None:
        if settings.tls_cert is None or settings.tls_key is None:
            raise ValueError("mutual TLS needs both tls_cert and tls_key")
        mutual = (settings.tls_cert.read_bytes(), settings.tls_key.read_bytes())
    connection = TrunkConnection(settings.server, certificate, settings.insecure_loopback, settings.timeout_s,
                                 client_certificate=mutual)
    forward, backward = wire_codecs(settings.wire_settings())
    remote = RemoteTrunk(connection, identity, server_key, forward=forward, backward=backward)
    remote.connect(expected_layers, hidden_size, settings.partition.layout, model_type,
                   settings.micro_batches, base_id)
    return remote


class AggregationRefused(RuntimeError):
    """The server would see this client's adapters in plain, and the client requires secure aggregation."""


def check_aggregation(settings: ClientSettings, remote: RemoteTrunk) -> None:
    """Refuse a plain-aggregating server when FedAvg is on and secure aggregation is required."""
    if settings.fedavg and settings.require_secure_aggregation and remote.aggregation != "secure":
        raise AggregationRefused(f"the server at {settings.server} aggregates FedAvg rounds in plain: set "
                                 "`aggregation: secure` on the server, or `require_secure_aggregation: "
                                 "false` (or `fedavg: false`) on this client")


def _federated_average(client: SplitClient, remote: RemoteTrunk, round_index: int, weight: int,
                       check: AverageCheck | None = None) -> None:
    """Replace the head and tail adapters by the round's weighted average over all clients, unless the
    held-out ``check`` rejects it (the same for plain and secure rounds; None: adopt unchecked); if the
    round fails (too many clients dropped out), keep this client's own adapters."""
    states = client.adapter_states()
    flat = {f"{part}/{key}": value for part, state in states.items() for key, value in state.items()}
    try:
        if remote.aggregation == "secure":
            average, contributors = secure_average(remote, client.client_id, round_index, float(weight), flat)
        else:
            average, contributors = remote.aggregate(round_index, float(weight), flat)
    except RemoteError as error:
        if error.code != "bad_round":
            raise
        log.warning("round %d: no average (%s); keeping this client's adapters", round_index, error.message)
        return
    averaged = {part: {key: average[f"{part}/{key}"] for key in state} for part, state in states.items()}
    verdict = (check or AverageCheck(SelfCheckSettings(enabled=False), None)).apply(
        client, round_index, states, averaged, contributors)
    if verdict.adopted:
        log.info("round %d: %s FedAvg over %d client(s)", round_index, remote.aggregation, contributors)


def _stop_on_signals() -> tuple[threading.Event, dict]:
    """SIGTERM / SIGINT set the returned event: the client finishes its step, checkpoints and stops."""
    stop = threading.Event()
    previous: dict = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return stop, previous


@dataclass
class ClientRun:
    """What a client process trains with, built once before its loop (``prepare_client``)."""

    settings: ClientSettings
    split: SplitModel
    client: SplitClient
    defense: SplitDefense | None
    examples: list[dict]  # the rows trained on (the held-out rows are not among them)
    state: RunState
    store: CheckpointStore
    batches: Iterator[dict[str, Any]]
    served_blocks: tuple[int, int]  # the trunk's blocks this client needs
    hidden_size: int
    base_id: str | None = None  # digest of the base model the parts come from (checked at handshake)
    load_report: dict[str, float] | None = None  # how the parts were loaded (summary.json)
    check: AverageCheck | None = None  # the held-out check of each round's average (unchecked: None)

    def open_session(self) -> RemoteTrunk:
        """A session with the server, refused if it would aggregate in plain against the settings."""
        remote = connect(self.settings, self.served_blocks, self.hidden_size,
                         str(self.split.head.config.model_type), self.base_id)
        try:
            check_aggregation(self.settings, remote)
        except AggregationRefused:
            remote.close()
            remote.connection.close()
            raise
        return remote

    def reconnected(self, remote: RemoteTrunk) -> None:
        self.client.trunk = remote
        if self.client.optimizer is not None:
            self.client.optimizer.zero_grad(set_to_none=True)  # the repeated step starts clean

    def save_checkpoint(self) -> None:
        try:
            path = self.store.save(client_checkpoint(self.client, self.state, self.settings))
            log.debug("checkpoint %s", path)
        except CheckpointError as error:
            log.error("%s", error)


def prepare_client(settings: ClientSettings) -> ClientRun:
    """The model split, the data shard, the defense, the client, the resumed state and the batches."""
    if settings.steps % settings.rounds:
        raise ValueError(f"steps ({settings.steps}) must be a multiple of rounds ({settings.rounds})")
    rows = read_client_examples(settings.data)  # a bad data file is refused before the model loads
    loaded = load_client_parts(settings.model, settings.partition.partition(), settings.partition.layout,
                               DTYPES[settings.dtype])
    split, tokenizer = loaded.split, loaded.tokenizer
    init_adapter(split.head, settings.adapter, settings.seed)
    init_adapter(split.tail, settings.adapter, settings.seed)
    device = resolve_device(settings.device)
    place_client_parts(split, device)
    examples, held_out = client_rows(settings, load_client_examples(settings.data, tokenizer, rows))
    hidden_size = hidden_size_of(split.head.config)
    defense = None
    if settings.privacy.enabled:
        size = min(settings.batch_size, len(examples))
        defense = SplitDefense(settings.privacy, settings.steps, steps_per_epoch=len(examples) // size,
                               batch_size=size, hidden_size=hidden_size)
        if defense.cut is not None:
            defense.cut.to(next(split.head.parameters()).device)
    client = client_class(settings.partition.layout)(settings.name, split.head, split.tail,
                                                     None, settings.optimizer, defense,  # type: ignore[arg-type]
                                                     feedback=error_feedback(settings.wire_settings()),
                                                     micro_batches=settings.micro_batches)
    if settings.micro_batches > 1:
        log.info("each step goes to the trunk in %d pipelined micro-batches", settings.micro_batches)
    store = CheckpointStore(settings.checkpoint_dir or settings.output / "checkpoints")
    state = RunState()
    if settings.resume:
        checkpoint = store.latest()
        if checkpoint is not None:
            state = restore_client(client, checkpoint, settings)
            log.info("resuming from %s at step %d", checkpoint.path, state.steps_done)
        else:
            log.info("no checkpoint in %s: starting from the beginning", store.directory)
    if defense is not None and defense.cut is not None and state.steps_done == 0:
        _warm_up_through_public_trunk(settings, split, defense, tokenizer, device)
    pad = int(tokenizer.pad_token_id)
    check = AverageCheck(settings.self_check, collate(held_out, pad_token_id=pad) if held_out else None,
                         state.rounds)
    if settings.fedavg and not held_out and settings.self_check.enabled:
        log.warning("too few examples (%d) to hold any out: round averages are adopted unchecked",
                    len(examples))
    batches = shuffled_batches(examples, settings.batch_size, settings.seed + settings.data.shard,
                               lambda rows: collate(rows, pad_token_id=pad), skip=state.steps_done)
    served = (settings.partition.head, loaded.num_layers - settings.partition.tail)
    return ClientRun(settings, split, client, defense, examples, state, store, batches, served, hidden_size,
                     base_id(loaded.source), loaded.report.to_json(), check)


def client_rows(settings: ClientSettings, examples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the rows this client trains on, the rows it holds out to check round averages): rows are held out
    only with FedAvg on and ``self_check.enabled``, drawn with ``seed`` and ``data.shard``."""
    if not settings.fedavg:
        return examples, []
    return hold_out(examples, settings.self_check, settings.seed * 1_000_003 + settings.data.shard)


def _warm_up_through_public_trunk(settings: ClientSettings, split: SplitModel, defense: SplitDefense,
                                  tokenizer: Any, device: Any) -> None:
    """A learned defense warms up on public text through the public model: the trunk's public weights
    are loaded for the warm-up alone and released after it (the only time a client holds them)."""
    partition = settings.partition.partition()
    log.info("loading the public trunk for the learned defense's warm-up (released after it)")
    trunk = load_parts(settings.model, partition, ("trunk",), DTYPES[settings.dtype],
                       tokenizer=False).split.trunk
    if device.type != "cpu":
        trunk.to(device)
    public = SplitModel(split.head, trunk, split.tail, partition, split.family)
    warm_up_on_public_text(defense.cut, public, tokenizer, settings.seed)
    del public, trunk


def run_client(settings: ClientSettings, console: Console | None = None) -> dict[str, Any]:
    """Train ``settings.steps`` split steps against the server; save the head and tail adapters.

    Checkpoints at each round's end, every ``checkpoint_every`` steps and on SIGTERM/SIGINT (after the
    step in flight); ``resume`` continues from the newest intact one. While the server is unavailable
    the client reconnects with backoff and repeats the interrupted step."""
    console = console or Console(stderr=True)
    hint = spin_wait_hint(settings.server)
    if hint is not None:
        log.info(hint)
    run = prepare_client(settings)
    client, state = run.client, run.state
    check = run.check
    link = ServerLink(settings, run.open_session)
    client.trunk = link.remote
    metrics = MetricsWriter(settings.output)
    stop, previous = _stop_on_signals()
    outcome = LoopOutcome()
    started = time.perf_counter()
    started_at = time.time()  # wall clock, comparable across processes: start-up ends here
    try:
        with progress_bar(console, settings.name) as progress:
            shown = ShowProgress(progress, progress.add_task("train", total=settings.steps,
                                                             completed=state.steps_done, status=""),
                                 settings.output)
            rounds = RoundsAndCheckpoints(settings, shown, run.save_checkpoint, lambda r: link.call(
                lambda remote: _federated_average(client, remote, r, len(run.examples), check),
                run.reconnected))
            hooks = [shown, LogMetrics(metrics, link), rounds]
            outcome = train_steps(client, link, run.batches, state, settings.steps,
                                  settings.steps // settings.rounds, hooks, stop, run.reconnected)
        if outcome.stopped is not None:
            log.warning("%s: %s; training stops here", settings.name, outcome.stopped)
        if outcome.interrupted:
            run.save_checkpoint()
            log.warning("interrupted at step %d of %d; checkpoint saved in %s (continue with --resume)",
                        state.steps_done, settings.steps, run.store.directory)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        link.close(interrupted=outcome.interrupted)
        metrics.close()
    return finish_client(run, link, outcome, time.perf_counter() - started, started_at, metrics)


def finish_client(run: ClientRun, link: ServerLink, outcome: LoopOutcome, seconds: float, started_at: float,
                  metrics: MetricsWriter) -> dict[str, Any]:
    """Save the adapters (and the learned defense) unless interrupted, plot the metrics, and write and
    return ``summary.json``."""
    settings, state, defense = run.settings, run.state, run.defense
    if not outcome.interrupted:
        for part in (run.split.head, run.split.tail):
            save_adapter(part, settings.output / part.role, base_model=settings.model)
        if defense is not None and defense.cut is not None:
            save_cut(defense.cut, settings.output / "cut")
    if metrics.csv_path.is_file():
        plot_metrics(metrics.csv_path, settings.output / "curves.png", title=f"client {settings.name}")
    summary = {
        "name": settings.name,
        "steps": state.steps_done,
        "losses": state.losses,
        "seconds": seconds,
        "training_started_at": started_at,
        "training_ended_at": started_at + seconds,
        "tokens_per_second": state.tokens / seconds if seconds else 0.0,
        "bytes_sent": link.bytes_sent,
        "bytes_received": link.bytes_received,
        "interrupted": outcome.interrupted,
        "reconnects": link.reconnects,
        "examples": len(run.examples),
        "privacy": None if defense is None else defense.report(),
        "privacy_state": None if defense is None else defense.state_dict(),
        "stopped": outcome.stopped,
        "averages": (run.check or AverageCheck(settings.self_check, None, state.rounds)).summary(),
        "load": run.load_report,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    (settings.output / "summary.json").write_text(json.dumps(summary, indent=2))
    if not outcome.interrupted:
        log.info("%s: %d steps in %.1fs, final loss %.4f; adapters in %s", settings.name, state.steps_done,
                 seconds, state.losses[-1] if state.losses else float("nan"), settings.output)
    if defense is not None:
        log.info("%s: privacy spent %s over %d steps (%s)", settings.name, format_epsilon(defense.report()),
                 defense.steps, defense.describe())
    return summary
