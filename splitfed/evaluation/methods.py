"""The trainers compared by ``splitfed eval``, and how each trained model is scored.

zero-shot: the base model. centralized: the whole model with the adapters, all data pooled.
split: one client over the split model. federated-*: N clients against one trunk, FedAvg each round,
IID or Dirichlet label-skewed shards, or IID with the settings' defense; federated-network: the IID
federation as real processes over TLS (``network.py``); federated-ray: the IID federation with clients
and trunks as Ray actors (``splitfed.federation.simulation``). All start from the same adapter weights
(seeded) and take ``steps`` optimizer steps of ``batch_size`` examples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from splitfed.evaluation.settings import PRIVATE_METHODS, EvalSettings
from splitfed.federation import (
    CentralizedTrainer,
    FederationSettings,
    InProcessFederation,
    PartitionSettings,
    seeded_initial_states,
)
from splitfed.models import (
    LoraSpec,
    SplitModel,
    iter_greedy,
    num_layers,
    save_adapter,
    split_model,
    whole_logits,
)
from splitfed.privacy import PrivacySettings, save_cut
from splitfed.privacy.public import warm_up_text
from splitfed.tasks import (
    GenerateFn,
    TaskData,
    collate,
    encode_example,
    encode_generation,
    evaluate_cloze,
    evaluate_generation,
)
from splitfed.training.optim import OptimizerSettings
from splitfed.training.partitioning import dirichlet_partition, iid_partition
from splitfed.training.replicate import replicate

log = logging.getLogger(__name__)
StepHook = Callable[[float], None]


@dataclass
class MethodResult:
    """One row of the main table for one task."""

    method: str
    task: str
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    skipped: str | None = None
    startup_seconds: float = 0.0  # networked runs: start-up, apart from train_seconds


def noise_skip_reason(settings: EvalSettings) -> str | None:
    """Why the federated + defense row cannot run, or None when it can."""
    if settings.privacy is None or not settings.privacy.enabled:
        return ("skipped: no noise or learned defense given (e.g. --set privacy.forward.clip=2 "
                "--set privacy.forward.sigma=0.2)")
    return None


def method_privacy(settings: EvalSettings, method: str) -> PrivacySettings | None:
    """The defense ``method`` trains with: the settings' for federated-noise, -network and -ray."""
    return settings.privacy if method in PRIVATE_METHODS else None


def partition_sizes(settings: EvalSettings, blocks: int) -> tuple[int, int]:
    """The requested head/tail, or 2 each (1 each on models with fewer than 6 blocks)."""
    default = 2 if blocks >= 6 else 1
    head = default if settings.head is None else settings.head
    tail = default if settings.tail is None else settings.tail
    if head + tail >= blocks:
        raise ValueError(f"head {head} + tail {tail} leave no block for the server ({blocks} blocks)")
    return head, tail


def federation_settings(
    settings: EvalSettings, model: Any, clients: int, privacy: PrivacySettings | None = None
) -> FederationSettings:
    """``steps`` split into ``rounds`` x ``clients`` x local steps (must divide exactly)."""
    per_round = settings.rounds * clients
    if settings.steps % per_round:
        raise ValueError(f"steps {settings.steps} must be a multiple of rounds x clients = {per_round} "
                         "so that every trainer takes the same number of steps")
    head, tail = partition_sizes(settings, num_layers(model))
    extra: dict[str, Any] = {"privacy": privacy} if privacy is not None else {}
    return FederationSettings(
        clients=clients, rounds=settings.rounds, local_steps=settings.steps // per_round,
        batch_size=settings.batch_size, seed=settings.seed,
        partition=PartitionSettings(head=head, tail=tail),
        adapter=LoraSpec(r=settings.lora_rank, alpha=2.0 * settings.lora_rank),
        optimizer=OptimizerSettings(lr=settings.lr), **extra,
    )


def encode_task(task: TaskData, tokenizer: Any, max_length: int) -> list[dict]:
    """Training rows (input_ids, labels) of a classification or generation task."""
    encode = encode_example if task.kind == "classification" else encode_generation
    return [encode(tokenizer, example, max_length) for example in task.train]


def skew_labels(task: TaskData) -> list[int]:
    """Labels the non-IID split skews: the class, or for generation the target-length tercile."""
    if task.kind == "classification":
        return [example.label for example in task.train]
    lengths = [len(example.target.split()) for example in task.train]
    cuts = sorted(lengths)
    low, high = cuts[len(cuts) // 3], cuts[2 * len(cuts) // 3]
    return [0 if n < low else (1 if n < high else 2) for n in lengths]


def shards_for(method: str, task: TaskData, encoded: list[dict], settings: EvalSettings) -> list[list[dict]]:
    if method == "federated-noniid":
        indices = dirichlet_partition(skew_labels(task), settings.clients, settings.alpha, settings.seed)
    else:
        indices = iid_partition(len(encoded), settings.clients, settings.seed)
    return [[encoded[i] for i in shard] for shard in indices]


def greedy_generator(split: SplitModel, tokenizer: Any) -> GenerateFn:
    """Greedy decoding through head, trunk and tail with one KV cache per part."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        split.eval()
        tokens = list(iter_greedy(split, input_ids, attention_mask, max_new_tokens, eos, pad))
        return torch.stack(tokens, dim=1) if tokens else input_ids.new_zeros(len(input_ids), 0)

    return generate


class Trained:
    """A trained (or untrained) model, seen as logits for scoring and as a split for generation."""

    def __init__(self, logits: Callable, split: SplitModel, privacy: dict[str, Any] | None = None,
                 cut: torch.nn.Module | None = None) -> None:
        self.logits = logits
        self.split = split
        self.privacy = privacy  # the worst client's privacy spent, when a defense ran
        self.cut = cut  # client 0's learned defense, if one trained
        self.startup_seconds = 0.0  # networked runs: processes started, models loaded, sessions opened
        self.train_seconds: float | None = None  # networked runs: the steps alone
        self.close: Callable[[], None] = lambda: None  # frees what scoring still needed (Ray actors)

    def save_adapters(self, directory: Path, base_model: str) -> None:
        """The head, trunk and tail adapters (peft format) under ``directory``, and the learned cut,
        if any, under ``directory/cut``."""
        for part in (self.split.head, self.split.trunk, self.split.tail):
            save_adapter(part, directory / part.role, base_model=base_model)
        if self.cut is not None:
            save_cut(self.cut, directory / "cut")


def evaluate(trained: Trained, task: TaskData, tokenizer: Any, settings: EvalSettings,
             on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Accuracy / macro-F1 / loss (classification) or the generation metric on ``task.eval``."""
    if task.kind == "classification":
        return dict(evaluate_cloze(trained.logits, tokenizer, task.eval, settings.eval_batch_size,
                                   settings.max_length))
    return evaluate_generation(greedy_generator(trained.split, tokenizer), tokenizer, task.eval, task.metric,
                               settings.max_new_tokens, settings.eval_batch_size, settings.max_length,
                               on_batch)


def zero_shot(model: Any, settings: EvalSettings) -> Trained:
    head, tail = partition_sizes(settings, num_layers(model))
    from splitfed.models import Partition

    return Trained(whole_logits(model), split_model(replicate(model), Partition(head=head, tail=tail)))


def train_centralized(model: Any, encoded: list[dict], collate_rows: Callable, settings: EvalSettings,
                      on_step: StepHook) -> Trained:
    fed = federation_settings(settings, model, 1)
    trainer = CentralizedTrainer(model, encoded, collate_rows, fed, seeded_initial_states(model, fed))
    for _ in range(settings.steps):
        on_step(trainer.train_step())
    return Trained(trainer.logits, split_model(trainer.whole.hf_model, fed.partition.partition()))


def train_federated(model: Any, shards: list[list[dict]], collate_rows: Callable, settings: EvalSettings,
                    on_step: StepHook, privacy: PrivacySettings | None = None,
                    tokenizer: Any = None) -> Trained:
    fed = federation_settings(settings, model, len(shards), privacy)
    learned = fed.privacy.learned
    public = None if learned is None or tokenizer is None else warm_up_text(learned, tokenizer)
    federation = InProcessFederation(model, shards, collate_rows, fed, public_text=public)
    for _ in range(fed.rounds):
        federation.train_round(lambda _client, loss: on_step(loss))
    client = federation.clients[0]
    split = SplitModel(client.head, federation.server.trunk, client.tail, fed.partition.partition(),
                       client.head.family)
    reports = federation.privacy_reports()
    worst = max(reports, key=lambda r: float(r["epsilon"])) if reports else None
    return Trained(federation.logits, split, worst, cut=client.cut)


def train_federated_ray(model: Any, shards: list[list[dict]], collate_rows: Callable, settings: EvalSettings,
                        on_step: StepHook, privacy: PrivacySettings | None = None,
                        tokenizer: Any = None) -> Trained:
    """The IID federation with clients and trunks as Ray actors (``settings.simulation``); the actors
    stay up for scoring until ``Trained.close``."""
    from splitfed.federation.simulation import RayFederation
    from splitfed.server.ray_backend import connect_ray

    fed = federation_settings(settings, model, len(shards), privacy)
    learned = fed.privacy.learned
    public = None if learned is None or tokenizer is None else warm_up_text(learned, tokenizer)
    simulation = settings.simulation
    connect_ray(simulation.ray_address, simulation.cpus)
    federation = RayFederation(settings.model, model, shards, collate_rows, fed, simulation.sub_servers,
                               simulation.hosts, public_text=public, dtype=settings.dtype)
    try:
        for _ in range(fed.rounds):
            federation.train_round(lambda _client, loss: on_step(loss))
        reports = federation.privacy_reports()
        split = federation.split()
    except BaseException:
        federation.close()
        raise
    worst = max(reports, key=lambda r: float(r["epsilon"])) if reports else None
    trained = Trained(federation.logits, split, worst)
    trained.close = federation.close
    return trained


def make_collate(tokenizer: Any) -> Callable[[list[dict]], dict]:
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    return lambda rows: collate(rows, pad_token_id=pad)
