"""The ``federated-network`` method: the federation as deployed, a ``splitfed serve`` process and one
``splitfed train`` process per client over TLS on 127.0.0.1, scored like the in-process methods.

Every client process loads its own shard (the same IID shards as ``federated-iid``), so with the same
settings the networked losses equal the in-process ones step for step (``tests/cli/test_cli.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import Progress

from splitfed.client import SplitClient
from splitfed.evaluation.settings import EvalSettings
from splitfed.federation import FederationSettings
from splitfed.federation.processes import NetworkRun, run_network_federation
from splitfed.models import SplitModel, hidden_size, load_adapter, split_model
from splitfed.privacy import PrivacySettings, SplitDefense, load_cut
from splitfed.server import LocalTrunk
from splitfed.tasks import TaskData, available_tasks
from splitfed.training.replicate import replicate
from splitfed.training.task_data import DataSettings


def network_skip_reason(task: TaskData) -> str | None:
    """Why the networked run cannot train ``task``, or None when it can."""
    if task.kind != "classification" or task.name not in available_tasks():
        return "skipped: the networked run trains the shipped classification tasks (cb, rte, copa, boolq)"
    return None


def run_network(model_name: str, task: TaskData, settings: EvalSettings, fed: FederationSettings,
                progress: Progress) -> NetworkRun:
    """Train ``task`` with ``fed``'s clients as real processes; their outputs go under
    ``settings.output / "federation"``."""
    data = DataSettings(task=task.name, limit=settings.train_examples, seed=settings.seed,
                        max_length=settings.max_length, select=settings.select_examples)
    return run_network_federation(model_name, data, fed, Path(settings.output) / "federation", progress,
                                  shared={"dtype": settings.dtype, "device": settings.device})


def trained_client(model: Any, fed: FederationSettings, adapters: dict[str, Path]) -> SplitClient:
    """Client 0 as training left it (its adapters, its defense's learned cut) before the trained trunk."""
    split = split_model(replicate(model), fed.partition.partition())
    for role, part in split.parts.items():
        load_adapter(part, adapters[role])
    defense = trained_defense(fed.privacy, model, adapters.get("cut"))
    return SplitClient("client-0", split.head, split.tail, LocalTrunk(split.trunk), defense=defense)


def client_split(client: SplitClient, fed: FederationSettings) -> SplitModel:
    """The client's parts and the trunk as one in-process split (for generation)."""
    trunk = client.trunk.trunk  # type: ignore[attr-defined]
    return SplitModel(client.head, trunk, client.tail, fed.partition.partition(), client.head.family)


def trained_defense(privacy: PrivacySettings, model: Any, cut_directory: Path | None) -> SplitDefense | None:
    """The defense as the client ended training (its learned cut read from ``cut_directory``)."""
    if not privacy.enabled:
        return None
    defense = SplitDefense(privacy, planned_steps=1, hidden_size=hidden_size(model.config))
    if defense.cut is not None and (cut_directory is None or not load_cut(defense.cut, cut_directory)):
        raise FileNotFoundError(f"no trained learned defense in {cut_directory}")
    return defense
