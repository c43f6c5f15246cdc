"""`splitfed demo`: a preset of ``splitfed eval`` on one task: zero-shot, the federation (server and
client processes over TLS, or in process) and the centralized baseline, with the same data, initial
adapters, steps and seeds; optionally with a defense, whose effect on the run's own traffic it
measures with the attack harness."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field
from rich.console import Console

from splitfed.demo_privacy import DemoDefense, demo_privacy, exposure
from splitfed.evaluation import EvalResult, EvalSettings, run_eval
from splitfed.evaluation.methods import Trained, federation_settings, partition_sizes
from splitfed.evaluation.network import trained_client
from splitfed.models import DEFAULT_MODEL, Partition, load_model, num_layers, split_model
from splitfed.models.devices import OnDevice
from splitfed.models.placement import DTYPES
from splitfed.privacy import PrivacySettings
from splitfed.tasks import TaskData, available_tasks
from splitfed.training.replicate import replicate

log = logging.getLogger(__name__)


class DemoSettings(OnDevice):
    """What the demo runs; every field is also a ``splitfed demo`` option."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, description="the model: smollm2, a tiny test model (tiny-llama, "
                                                  "tiny-gemma3, ...: `splitfed models` lists them), a local "
                                                  "HF directory or a .gguf file")
    task: str = Field("cb", description="shipped task: cb, rte, copa or boolq")
    clients: int = Field(3, ge=1, description="clients, each with its own shard of the data")
    steps: int = Field(36, ge=1, description="optimizer steps of each trainer (the federation in all, and "
                                             "centralized); rounded up to rounds x clients x k")
    rounds: int = Field(3, ge=1, description="FedAvg rounds the steps are spread over")
    batch_size: int = Field(4, ge=1, description="examples per step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the LoRA adapters")
    lora_rank: int = Field(8, ge=1, description="LoRA rank (alpha = 2 x rank)")
    head: int | None = Field(None, ge=0, description="blocks the client keeps before the trunk (unset: 2; "
                                                     "1 on tiny models)")
    tail: int | None = Field(None, ge=0, description="blocks the client keeps after the trunk (unset: 2; 1 "
                                                     "on tiny models)")
    train_examples: int = Field(480, ge=1, description="training examples, shared out among the clients")
    eval_examples: int = Field(120, ge=1, description="held-out examples scored before and after")
    max_length: int = Field(256, ge=16, description="tokens per example (longer prompts are cut from the "
                                                    "left)")
    seed: int = Field(0, description="seed of data order, shards and adapter initialisation")
    in_process: bool = Field(False, description="run the federation in this process instead of as a "
                                                "server and client processes over TLS")
    defense: DemoDefense = Field("none", description="train with a privacy defense: none, noise (clip + "
                                                     "Gaussian noise), bottleneck (learned information "
                                                     "bottleneck + local bypass) or dcor (distance "
                                                     "correlation + bypass); then attack the run's own "
                                                     "traffic and report what the server could read with "
                                                     "and without it")
    output: Path = Field(Path("runs/demo"), description="where results.json, the loss plot and adapters go")

    @property
    def federated_method(self) -> str:
        """The evaluation method of the federation row."""
        if not self.in_process:
            return "federated-network"
        if self.defense != "none":
            return "federated-noise"
        return "split" if self.clients == 1 else "federated-iid"  # split: the whole data in eval's order


def eval_preset(settings: DemoSettings, privacy: PrivacySettings | None) -> EvalSettings:
    """The ``splitfed eval`` settings the demo runs: three rows on one task; the steps rounded up to
    a multiple of rounds x clients so that every client takes the same number of local steps."""
    per_round = settings.rounds * settings.clients
    steps = -(-settings.steps // per_round) * per_round
    if steps != settings.steps:
        log.warning("steps rounded up to %d = %d rounds x %d clients x %d local steps", steps,
                    settings.rounds, settings.clients, steps // per_round)
    return EvalSettings(
        model=settings.model, tasks=[settings.task],
        methods=["zero-shot", settings.federated_method, "centralized"],  # type: ignore[list-item]
        clients=settings.clients, steps=steps, rounds=settings.rounds, batch_size=settings.batch_size,
        lr=settings.lr, lora_rank=settings.lora_rank, head=settings.head, tail=settings.tail,
        privacy=privacy, train_examples=settings.train_examples, eval_examples=settings.eval_examples,
        max_length=settings.max_length, seed=settings.seed, output=settings.output, dtype=settings.dtype,
        device=settings.device)


def run_demo(settings: DemoSettings, console: Console | None = None) -> EvalResult:
    """Fine-tune ``settings.model`` federated (split, N clients) and centralized; evaluate both; with a
    defense, attack the federation's own traffic. Client 0's adapters go to ``output/adapters``."""
    console = console or Console()
    if settings.task not in available_tasks():
        raise ValueError(f"unknown task {settings.task!r}; choose one of {', '.join(available_tasks())}")
    with console.status(f"loading {settings.model} ..."):
        model, tokenizer = load_model(settings.model, dtype=DTYPES[settings.dtype])
    console.print(f"loaded [bold]{settings.model}[/] ({model.config.model_type}, "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    privacy = None
    if settings.defense != "none":
        head, tail = _partition(settings, model)
        public_head = split_model(replicate(model), Partition(head, tail)).head
        privacy = demo_privacy(settings.defense, public_head, tokenizer, settings.seed)
        console.print(f"defense [bold]{settings.defense}[/]: {privacy.model_dump(exclude_defaults=True)}")
    preset = eval_preset(settings, privacy)
    adapters = settings.output / "adapters"
    exposed: dict[str, Any] = {}

    def after_method(task: TaskData, method: str, trained: Trained) -> None:
        if method != settings.federated_method:
            return
        trained.save_adapters(adapters, settings.model)
        if privacy is not None:
            with console.status("attacking the run's own traffic (what the server could read) ..."):
                exposed.update(_exposure(model, tokenizer, settings, preset, privacy, adapters))

    result = run_eval(preset, console, loaded=(model, tokenizer), after_method=after_method)
    result.settings["defense"] = settings.defense
    result.settings["in_process"] = settings.in_process
    if exposed:
        result.extras["exposure"] = exposed
    return result


def _partition(settings: DemoSettings, model: Any) -> tuple[int, int]:
    probe = EvalSettings(model=settings.model, head=settings.head, tail=settings.tail)
    return partition_sizes(probe, num_layers(model))


def _exposure(model: Any, tokenizer: Any, settings: DemoSettings, preset: EvalSettings,
              privacy: PrivacySettings, adapters: Path) -> dict[str, Any]:
    """The strongest attack on client 0's traffic, with and without its trained defense."""
    fed = federation_settings(preset, model, settings.clients, privacy)
    parts = {role: adapters / role for role in ("head", "trunk", "tail", "cut") if (adapters / role).is_dir()}
    victim = trained_client(model, fed, parts)
    return exposure(model, tokenizer, settings.task, fed.partition.partition(), victim.head,
                    victim.trunk.trunk, fed.privacy, victim.defense, settings.seed)  # type: ignore[attr-defined]
