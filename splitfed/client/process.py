"""A client process: head and tail on private data, the trunk on the server, over an encrypted session."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from splitfed.checkpoint import CheckpointError, CheckpointStore
from splitfed.client.checkpointing import RunState, client_checkpoint, restore_client
from splitfed.client.colocation import spin_wait_hint
from splitfed.client.link import ServerLink
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.client.secure_aggregation import secure_average
from splitfed.client.settings import ClientSettings
from splitfed.client.split_client import SplitClient, client_class
from splitfed.models import (
    init_adapter,
    load_model,
    num_layers,
    save_adapter,
    split_model,
    token_embedding_matrix,
)
from splitfed.observability import MetricsWriter, plot_metrics
from splitfed.privacy import PrivacyBudgetExhausted, SplitDefense, format_epsilon, save_cut
from splitfed.privacy.public import warm_up_on_public_text
from splitfed.security import Identity, PublicIdentity
from splitfed.tasks import collate
from splitfed.training.data import shuffled_batches
from splitfed.training.task_data import load_client_examples
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError

log = logging.getLogger(__name__)


def connect(settings: ClientSettings, expected_layers: tuple[int, int], hidden_size: int) -> RemoteTrunk:
    """Open an authenticated, encrypted session with the trunk server."""
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
    remote = RemoteTrunk(connection, identity, server_key, settings.wire_dtype)
    remote.connect(expected_layers, hidden_size, settings.partition.layout)
    return remote


def _report_progress(directory: Path, step: int, loss: float, privacy: dict[str, Any] | None = None) -> None:
    """Leave the step count (and the privacy spent) where an orchestrator (the demo) can follow it."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / "progress.json.tmp"
    record: dict[str, Any] = {"step": step, "loss": loss}
    if privacy is not None:
        record["privacy"] = privacy
    staging.write_text(json.dumps(record))
    staging.replace(directory / "progress.json")


class AggregationRefused(RuntimeError):
    """The server would see this client's adapters in plain, and the client requires secure aggregation."""


def check_aggregation(settings: ClientSettings, remote: RemoteTrunk) -> None:
    """Refuse a plain-aggregating server when FedAvg is on and secure aggregation is required."""
    if settings.fedavg and settings.require_secure_aggregation and remote.aggregation != "secure":
        raise AggregationRefused(f"the server at {settings.server} aggregates FedAvg rounds in plain: set "
                                 "`aggregation: secure` on the server, or `require_secure_aggregation: "
                                 "false` (or `fedavg: false`) on this client")


def _federated_average(client: SplitClient, remote: RemoteTrunk, round_index: int, weight: int) -> None:
    """Replace the head and tail adapters by the round's weighted average over all clients; if the
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
    client.load_adapter_states({part: {key: average[f"{part}/{key}"] for key in state}
                                for part, state in states.items()})
    log.info("round %d: %s FedAvg over %d client(s)", round_index, remote.aggregation, contributors)


def _stop_on_signals() -> tuple[threading.Event, dict]:
    """SIGTERM / SIGINT set the returned event: the client finishes its step, checkpoints and stops."""
    stop = threading.Event()
    previous: dict = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return stop, previous


def run_client(settings: ClientSettings, console: Console | None = None) -> dict[str, Any]:
    """Train ``settings.steps`` split steps against the server; save the head and tail adapters.

    Checkpoints at each round's end, every ``checkpoint_every`` steps and on SIGTERM/SIGINT (after the
    step in flight); ``resume`` continues from the newest intact one. While the server is unavailable
    the client reconnects with backoff and repeats the interrupted step."""
    console = console or Console(stderr=True)
    hint = spin_wait_hint(settings.server)
    if hint is not None:
        log.info(hint)
    model, tokenizer = load_model(settings.model)
    split = split_model(model, settings.partition.partition())
    init_adapter(split.head, settings.adapter, settings.seed)
    init_adapter(split.tail, settings.adapter, settings.seed)
    examples = load_client_examples(settings.data, tokenizer)
    hidden_size = int(token_embedding_matrix(model).shape[1])
    defense = None
    if settings.privacy.enabled:
        size = min(settings.batch_size, len(examples))
        defense = SplitDefense(settings.privacy, settings.steps, steps_per_epoch=len(examples) // size,
                               batch_size=size, hidden_size=hidden_size)
    if settings.steps % settings.rounds:
        raise ValueError(f"steps ({settings.steps}) must be a multiple of rounds ({settings.rounds})")
    per_round = settings.steps // settings.rounds
    client = client_class(settings.partition.layout)(settings.name, split.head, split.tail,
                                                     None, settings.optimizer, defense)  # type: ignore[arg-type]
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
        warm_up_on_public_text(defense.cut, split, tokenizer, settings.seed)
    pad = int(tokenizer.pad_token_id)
    batches = shuffled_batches(examples, settings.batch_size, settings.seed + settings.data.shard,
                               lambda rows: collate(rows, pad_token_id=pad), skip=state.steps_done)
    blocks = num_layers(model)
    expected = (settings.partition.head, blocks - settings.partition.tail)

    def open_session() -> RemoteTrunk:
        remote = connect(settings, expected, hidden_size)
        try:
            check_aggregation(settings, remote)
        except AggregationRefused:
            remote.close()
            remote.connection.close()
            raise
        return remote

    def reconnected(remote: RemoteTrunk) -> None:
        client.trunk = remote
        if client.optimizer is not None:
            client.optimizer.zero_grad(set_to_none=True)  # the repeated step starts clean

    def save_checkpoint() -> None:
        try:
            path = store.save(client_checkpoint(client, state, settings))
            log.debug("checkpoint %s", path)
        except CheckpointError as error:
            log.error("%s", error)

    link = ServerLink(settings, open_session)
    client.trunk = link.remote
    metrics = MetricsWriter(settings.output)
    stop, previous = _stop_on_signals()
    interrupted = False
    stopped: str | None = None
    started = time.perf_counter()
    started_at = time.time()  # wall clock, comparable across processes: start-up ends here
    try:
        with Progress(TextColumn(f"[bold]{settings.name}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("train", total=settings.steps, completed=state.steps_done, status="")
            while state.steps_done < settings.steps:
                if stop.is_set():
                    interrupted = True
                    break
                batch = next(batches)
                step_started = time.perf_counter()
                try:
                    loss = link.call(lambda _remote, batch=batch: client.train_step(batch), reconnected)
                except PrivacyBudgetExhausted as error:
                    stopped = str(error)
                    log.warning("%s: %s; training stops here", settings.name, error)
                    break
                state.steps_done += 1
                state.losses.append(loss)
                round_index = (state.steps_done - 1) // per_round + 1
                privacy = None if defense is None else defense.report()
                status = f"round {round_index} loss {loss:.3f}"
                if privacy is not None:
                    status += f" {format_epsilon(privacy)}"
                progress.update(task, advance=1, status=status)
                _report_progress(settings.output, state.steps_done, loss, privacy)
                batch_tokens = int(batch["attention_mask"].sum())
                state.tokens += batch_tokens
                epsilon = {} if privacy is None or privacy["epsilon"] == "inf" else {
                    "epsilon": privacy["epsilon"]}
                metrics.log(state.steps_done, loss=loss,
                            tokens_per_s=batch_tokens / (time.perf_counter() - step_started),
                            bytes_sent=link.bytes_sent, bytes_received=link.bytes_received, **epsilon)
                if state.steps_done % per_round == 0:
                    if settings.fedavg:
                        progress.update(task, status=f"round {round_index}: waiting for FedAvg")
                        link.call(lambda remote, r=round_index: _federated_average(
                            client, remote, r, len(examples)), reconnected)
                    save_checkpoint()
                elif settings.checkpoint_every and state.steps_done % settings.checkpoint_every == 0:
                    save_checkpoint()
        if interrupted:
            save_checkpoint()
            log.warning("interrupted at step %d of %d; checkpoint saved in %s (continue with --resume)",
                        state.steps_done, settings.steps, store.directory)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        link.close(interrupted=interrupted)
        metrics.close()
    losses = state.losses
    tokens = state.tokens
    seconds = time.perf_counter() - started
    if not interrupted:
        for part in (split.head, split.tail):
            save_adapter(part, settings.output / part.role, base_model=settings.model)
        if defense is not None and defense.cut is not None:
            save_cut(defense.cut, settings.output / "cut")
    if metrics.csv_path.is_file():
        plot_metrics(metrics.csv_path, settings.output / "curves.png", title=f"client {settings.name}")
    summary = {
        "name": settings.name,
        "steps": state.steps_done,
        "losses": losses,
        "seconds": seconds,
        "training_started_at": started_at,
        "training_ended_at": started_at + seconds,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "bytes_sent": link.bytes_sent,
        "bytes_received": link.bytes_received,
        "interrupted": interrupted,
        "reconnects": link.reconnects,
        "examples": len(examples),
        "privacy": None if defense is None else defense.report(),
        "privacy_state": None if defense is None else defense.state_dict(),
        "stopped": stopped,
    }
    (settings.output / "summary.json").write_text(json.dumps(summary, indent=2))
    if not interrupted:
        log.info("%s: %d steps in %.1fs, final loss %.4f; adapters in %s", settings.name, state.steps_done,
                 seconds, losses[-1] if losses else float("nan"), settings.output)
    if defense is not None:
        log.info("%s: privacy spent %s over %d steps (%s)", settings.name, format_epsilon(defense.report()),
                 defense.steps, defense.describe())
    return summary
