"""A client process: head and tail on private data, the trunk on the server, over an encrypted session."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.client.settings import ClientSettings
from splitfed.client.split_client import SplitClient
from splitfed.models import init_adapter, load_model, num_layers, save_adapter, split_model
from splitfed.privacy import PrivacyBudgetExhausted, SplitDefense, format_epsilon
from splitfed.security import Identity, PublicIdentity
from splitfed.tasks import collate
from splitfed.training.data import shuffled_batches
from splitfed.training.task_data import load_client_examples
from splitfed.transport.connection import TrunkConnection

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
    remote.connect(expected_layers, hidden_size)
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


def _federated_average(client: SplitClient, remote: RemoteTrunk, round_index: int, weight: int) -> None:
    """Replace the head and tail adapters by the round's weighted average over all clients."""
    states = client.adapter_states()
    flat = {f"{part}/{key}": value for part, state in states.items() for key, value in state.items()}
    average, contributors = remote.aggregate(round_index, float(weight), flat)
    client.load_adapter_states({part: {key: average[f"{part}/{key}"] for key in state}
                                for part, state in states.items()})
    log.info("round %d: FedAvg over %d client(s)", round_index, contributors)


def run_client(settings: ClientSettings, console: Console | None = None) -> dict[str, Any]:
    """Train ``settings.steps`` split steps against the server; save the head and tail adapters."""
    console = console or Console(stderr=True)
    model, tokenizer = load_model(settings.model)
    split = split_model(model, settings.partition.partition())
    init_adapter(split.head, settings.adapter, settings.seed)
    init_adapter(split.tail, settings.adapter, settings.seed)
    examples = load_client_examples(settings.data, tokenizer)
    pad = int(tokenizer.pad_token_id)
    batches = shuffled_batches(examples, settings.batch_size, settings.seed + settings.data.shard,
                               lambda rows: collate(rows, pad_token_id=pad))
    blocks = num_layers(model)
    expected = (settings.partition.head, blocks - settings.partition.tail)
    hidden_size = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    remote = connect(settings, expected, hidden_size)
    defense = None
    if settings.privacy.enabled:
        size = min(settings.batch_size, len(examples))
        defense = SplitDefense(settings.privacy, settings.steps, steps_per_epoch=len(examples) // size,
                               batch_size=size)
    client = SplitClient(settings.name, split.head, split.tail, remote, settings.optimizer, defense)
    if settings.steps % settings.rounds:
        raise ValueError(f"steps ({settings.steps}) must be a multiple of rounds ({settings.rounds})")
    per_round = settings.steps // settings.rounds
    losses: list[float] = []
    started = time.perf_counter()
    tokens = 0
    stopped: str | None = None
    try:
        with Progress(TextColumn(f"[bold]{settings.name}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("train", total=settings.steps, status="")
            for round_index in range(1, settings.rounds + 1):
                for _ in range(per_round):
                    batch = next(batches)
                    try:
                        losses.append(client.train_step(batch))
                    except PrivacyBudgetExhausted as error:
                        stopped = str(error)
                        log.warning("%s: %s; training stops here", settings.name, error)
                        break
                    tokens += int(batch["attention_mask"].sum())
                    privacy = None if defense is None else defense.report()
                    status = f"round {round_index} loss {losses[-1]:.3f}"
                    if privacy is not None:
                        status += f" {format_epsilon(privacy)}"
                    progress.update(task, advance=1, status=status)
                    _report_progress(settings.output, len(losses), losses[-1], privacy)
                if stopped is not None:
                    break
                if settings.fedavg:
                    progress.update(task, status=f"round {round_index}: waiting for FedAvg")
                    _federated_average(client, remote, round_index, len(examples))
    finally:
        remote.close()
        remote.connection.close()
    seconds = time.perf_counter() - started
    for part in (split.head, split.tail):
        save_adapter(part, settings.output / part.role, base_model=settings.model)
    summary = {
        "name": settings.name,
        "steps": len(losses),
        "losses": losses,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "bytes_sent": remote.connection.bytes_sent,
        "bytes_received": remote.connection.bytes_received,
        "examples": len(examples),
        "privacy": None if defense is None else defense.report(),
        "privacy_state": None if defense is None else defense.state_dict(),
        "stopped": stopped,
    }
    (settings.output / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("%s: %d steps in %.1fs, final loss %.4f; adapters in %s", settings.name, len(losses),
             seconds, losses[-1] if losses else float("nan"), settings.output)
    if defense is not None:
        log.info("%s: privacy spent %s over %d steps (%s)", settings.name, format_epsilon(defense.report()),
                 defense.steps, defense.describe())
    return summary
