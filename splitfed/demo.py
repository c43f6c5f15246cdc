"""`splitfed demo`: federated split fine-tuning on a real task, against the centralized baseline."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import Progress

from splitfed.client import SplitClient
from splitfed.demo_privacy import DemoDefense, demo_privacy, exposure, trained_defense
from splitfed.federation import (
    CentralizedTrainer,
    FederationSettings,
    InProcessFederation,
    PartitionSettings,
    seeded_initial_states,
)
from splitfed.federation.processes import run_network_federation
from splitfed.models import (
    DEFAULT_MODEL,
    LoraSpec,
    load_adapter,
    load_model,
    num_layers,
    save_adapter,
    split_model,
    whole_logits,
)
from splitfed.observability import progress_bar
from splitfed.privacy import PrivacySettings, save_cut
from splitfed.privacy.public import warm_up_text
from splitfed.server import LocalTrunk
from splitfed.tasks import available_tasks, collate, encode_example, evaluate_cloze, load_task
from splitfed.training.data import iid_shards
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from splitfed.training.task_data import DataSettings

log = logging.getLogger(__name__)


class DemoSettings(BaseModel):
    """What the demo runs; every field is also a ``splitfed demo`` option."""

    model_config = ConfigDict(extra="forbid")
    model: str = DEFAULT_MODEL
    task: str = "cb"
    clients: int = Field(3, ge=1)
    steps: int = Field(36, ge=1, description="optimizer steps per trainer (federation and centralized)")
    rounds: int = Field(3, ge=1, description="FedAvg rounds the steps are spread over")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    lora_rank: int = Field(8, ge=1)
    head: int | None = Field(None, ge=0, description="blocks kept before the trunk (default: 2, 1 if tiny)")
    tail: int | None = Field(None, ge=0, description="blocks kept after the trunk (default: 2, 1 if tiny)")
    train_examples: int = Field(480, ge=1, description="training examples, shared out among clients")
    eval_examples: int = Field(120, ge=1)
    max_length: int = Field(256, ge=16)
    seed: int = 0
    in_process: bool = Field(False, description="run the federation in this process instead of as a "
                                                "server and client processes over the network")
    defense: DemoDefense = Field("none", description="train with a privacy defense (noise, bottleneck, "
                                                     "dcor) and measure what the server could read of the "
                                                     "run's own traffic with and without it")
    output: Path = Path("runs/demo")


@dataclass
class Evaluation:
    accuracy: float
    macro_f1: float
    loss: float
    n: int


@dataclass
class TrainerResult:
    name: str
    before: Evaluation
    after: Evaluation
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # training only
    examples_per_second: float = 0.0
    startup_seconds: float = 0.0  # processes started, models loaded, sessions opened (networked runs)


@dataclass
class DemoResult:
    settings: dict[str, Any]
    federated: TrainerResult
    centralized: TrainerResult
    load_seconds: float
    total_seconds: float
    exposure: dict[str, Any] | None = None  # with --defense: the strongest attack, with and without it


def _federation_settings(settings: DemoSettings, model: Any,
                         privacy: PrivacySettings | None = None) -> FederationSettings:
    per_round = settings.rounds * settings.clients
    per_client = -(-settings.steps // per_round)
    rounds = settings.rounds
    if per_client * per_round != settings.steps:
        log.warning("steps rounded up to %d = %d rounds x %d clients x %d local steps",
                    per_client * per_round, rounds, settings.clients, per_client)
    head, tail = default_partition(settings, num_layers(model))
    if head + tail >= num_layers(model):
        raise ValueError(f"--head {head} --tail {tail} leave no block for the server "
                         f"(the model has {num_layers(model)} blocks)")
    return FederationSettings(
        clients=settings.clients,
        rounds=rounds,
        local_steps=per_client,
        batch_size=settings.batch_size,
        seed=settings.seed,
        partition=PartitionSettings(head=head, tail=tail),
        adapter=LoraSpec(r=settings.lora_rank, alpha=2.0 * settings.lora_rank),
        optimizer=OptimizerSettings(lr=settings.lr),
        privacy=privacy or PrivacySettings(),
    )


def default_partition(settings: DemoSettings, blocks: int) -> tuple[int, int]:
    """The requested head/tail, or 2 each (1 each on models with fewer than 6 blocks)."""
    default = 2 if blocks >= 6 else 1
    return (default if settings.head is None else settings.head,
            default if settings.tail is None else settings.tail)


def _evaluate(logits_fn: Any, tokenizer: Any, examples: list, settings: DemoSettings) -> Evaluation:
    metrics = evaluate_cloze(logits_fn, tokenizer, examples, batch_size=8, max_length=settings.max_length)
    return Evaluation(metrics["accuracy"], metrics["macro_f1"], metrics["loss"], metrics["n"])


def run_demo(settings: DemoSettings, console: Console | None = None) -> DemoResult:
    """Fine-tune ``settings.model`` federated (split, N clients) and centralized; evaluate both."""
    console = console or Console()
    if settings.task not in available_tasks():
        raise ValueError(f"unknown task {settings.task!r}; choose one of {', '.join(available_tasks())}")
    started = time.perf_counter()
    with console.status(f"loading {settings.model} ..."):
        model, tokenizer = load_model(settings.model)
    load_seconds = time.perf_counter() - started
    console.print(f"loaded [bold]{settings.model}[/] ({model.config.model_type}, "
                  f"{num_layers(model)} blocks, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
                  f"parameters) in {load_seconds:.1f}s")

    train = load_task(settings.task, "train", limit=settings.train_examples)
    evaluation = load_task(settings.task, "val", limit=settings.eval_examples)
    encoded = [encode_example(tokenizer, e, settings.max_length) for e in train]
    pad = int(tokenizer.pad_token_id)

    def collate_rows(rows: list) -> dict:
        return collate(rows, pad_token_id=pad)

    fed_settings = _federation_settings(settings, model)
    if settings.defense != "none":
        public_head = split_model(replicate(model), fed_settings.partition.partition()).head
        privacy = demo_privacy(settings.defense, public_head, tokenizer, settings.seed)
        fed_settings = fed_settings.model_copy(update={"privacy": privacy})
        console.print(f"defense [bold]{settings.defense}[/]: {privacy.model_dump(exclude_defaults=True)}")
    shards = iid_shards(encoded, settings.clients, settings.seed)
    console.print(f"task [bold]{settings.task}[/]: {len(train)} training examples in {settings.clients} "
                  f"shards of {', '.join(str(len(s)) for s in shards)}; {len(evaluation)} held-out "
                  f"examples; partition head={fed_settings.partition.head} / "
                  f"tail={fed_settings.partition.tail}, {fed_settings.total_steps} steps per trainer")

    with progress_bar(console) as progress:
        task = progress.add_task("zero-shot eval", total=1, status="")
        before = _evaluate(whole_logits(model), tokenizer, evaluation, settings)
        progress.update(task, completed=1, status=f"acc {before.accuracy:.3f}")

        # Same data (the shards pooled), same initial adapters, same steps and seeds.
        pooled = [row for shard in shards for row in shard]
        central = CentralizedTrainer(model, pooled, collate_rows, fed_settings,
                                     seeded_initial_states(model, fed_settings))
        learned = fed_settings.privacy.learned
        if settings.in_process:
            federation = InProcessFederation(model, shards, collate_rows, fed_settings,
                                             public_text=None if learned is None else warm_up_text(learned,
                                                                                                   tokenizer))
            federated = _train_federation(federation, fed_settings, progress, before)
            federated.after = _evaluate(federation.logits, tokenizer, evaluation, settings)
            save_federated_adapters(federation, settings.output / "adapters", settings.model)
        else:
            federated = _network_federation(model, settings, fed_settings, progress, before)
        victim = _trained_client(model, fed_settings, settings.output / "adapters")
        if not settings.in_process:
            federated.after = _evaluate(victim.logits, tokenizer, evaluation, settings)

        centralized = _train_centralized(central, fed_settings, progress, before)
        centralized.after = _evaluate(central.logits, tokenizer, evaluation, settings)

    exposed = None
    if settings.defense != "none":
        with console.status("attacking the run's own traffic (what the server could read) ..."):
            exposed = exposure(model, tokenizer, settings.task, fed_settings.partition.partition(),
                               victim.head, victim.trunk.trunk, fed_settings.privacy, victim.defense,
                               settings.seed)

    result = DemoResult(
        settings=json.loads(settings.model_dump_json()),
        federated=federated,
        centralized=centralized,
        load_seconds=load_seconds,
        total_seconds=time.perf_counter() - started,
        exposure=exposed,
    )
    return result


def _network_federation(model: Any, settings: DemoSettings, fed_settings: FederationSettings,
                        progress: Progress, before: Evaluation) -> TrainerResult:
    data = DataSettings(task=settings.task, limit=settings.train_examples, seed=settings.seed,
                        max_length=settings.max_length)
    run = run_network_federation(settings.model, data, fed_settings, settings.output / "federation", progress)
    for role, directory in run.adapters.items():
        shutil.copytree(directory, settings.output / "adapters" / role, dirs_exist_ok=True)
    result = TrainerResult("federated (processes)", before, before, losses=run.losses,
                           seconds=run.seconds, startup_seconds=run.startup_seconds)
    result.examples_per_second = fed_settings.total_steps * fed_settings.batch_size / max(run.seconds, 1e-9)
    return result


def _trained_client(model: Any, fed_settings: FederationSettings, adapters: Path) -> SplitClient:
    """Client 0 as training left it (its adapters, its defense's cut) in front of the trained trunk."""
    split = split_model(replicate(model), fed_settings.partition.partition())
    for role, part in split.parts.items():
        load_adapter(part, adapters / role)
    defense = trained_defense(fed_settings.privacy, model, adapters / "cut")
    return SplitClient("client-0", split.head, split.tail, LocalTrunk(split.trunk), defense=defense)


def _train_federation(
    federation: InProcessFederation, settings: FederationSettings, progress: Progress, before: Evaluation
) -> TrainerResult:
    task = progress.add_task(f"federated ({settings.clients} clients)", total=settings.total_steps, status="")
    result = TrainerResult("federated split", before, before)
    started = time.perf_counter()
    for round_index in range(settings.rounds):
        def on_step(client: int, loss: float, round_index: int = round_index) -> None:
            result.losses.append(loss)
            progress.update(task, advance=1, status=f"round {round_index + 1}/{settings.rounds} "
                                                    f"client {client} loss {loss:.3f}")
        federation.train_round(on_step)
    result.seconds = time.perf_counter() - started
    result.examples_per_second = settings.total_steps * settings.batch_size / max(result.seconds, 1e-9)
    return result


def _train_centralized(
    central: CentralizedTrainer, settings: FederationSettings, progress: Progress, before: Evaluation
) -> TrainerResult:
    task = progress.add_task("centralized baseline", total=settings.total_steps, status="")
    result = TrainerResult("centralized", before, before)
    started = time.perf_counter()
    for _ in range(settings.total_steps):
        loss = central.train_step()
        result.losses.append(loss)
        progress.update(task, advance=1, status=f"loss {loss:.3f}")
    result.seconds = time.perf_counter() - started
    result.examples_per_second = settings.total_steps * settings.batch_size / max(result.seconds, 1e-9)
    return result


def save_federated_adapters(federation: InProcessFederation, directory: Path, base_model: str) -> None:
    """Save the federated head, trunk and tail adapters (peft format) under ``directory``, and client
    0's learned defense, if any, under ``directory/cut``."""
    client = federation.clients[0]
    for part in (client.head, federation.server.trunk, client.tail):
        save_adapter(part, directory / part.role, base_model=base_model)
    if client.cut is not None:
        save_cut(client.cut, directory / "cut")


def save_result(result: DemoResult, directory: Path) -> Path:
    """Write ``results.json`` into ``directory``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    path.write_text(json.dumps(asdict(result), indent=2, default=str))
    return path
