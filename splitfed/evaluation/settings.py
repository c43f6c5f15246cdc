"""Typed settings of ``splitfed eval`` / ``benchmarks/quality.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from splitfed.models import DEFAULT_MODEL
from splitfed.models.devices import OnDevice
from splitfed.privacy import PrivacySettings
from splitfed.tasks import TaskSpec

Method = Literal["zero-shot", "centralized", "split", "federated-iid", "federated-noniid", "federated-noise",
                 "federated-network", "federated-ray"]
METHODS: tuple[str, ...] = ("zero-shot", "centralized", "split", "federated-iid", "federated-noniid",
                            "federated-noise")  # the default rows; -network and -ray are asked for by name
PRIVATE_METHODS = frozenset({"federated-noise", "federated-network", "federated-ray"})  # train with `privacy`
METHOD_LABELS: dict[str, str] = {
    "zero-shot": "zero-shot (no training)",
    "centralized": "centralized (whole model)",
    "split": "split, 1 client",
    "federated-iid": "federated, {clients} clients, IID",
    "federated-noniid": "federated, {clients} clients, non-IID (Dirichlet {alpha})",
    "federated-noise": "federated, {clients} clients, IID + defense",
    "federated-network": "federated, {clients} client processes over TLS",
    "federated-ray": "federated, {clients} clients simulated on Ray ({sub_servers} sub-server(s))",
}
FEDERATED_METHODS = ("split", "federated-iid", "federated-noniid", "federated-noise", "federated-network",
                     "federated-ray")  # the rows compared with centralized


class SimulationSettings(BaseModel):
    """The ``federated-ray`` row (``splitfed simulate``): clients and trunks as Ray actors."""

    model_config = ConfigDict(extra="forbid")
    sub_servers: int = Field(1, ge=1, description="trunk actors; client i trains against sub-server i % K, "
                             "and the trunks are averaged by samples after every round (1: the same "
                             "steps as federated-iid)")
    hosts: int | None = Field(None, ge=1, description="actors holding the clients (one frozen base each); "
                              "default: the Ray cluster's CPUs minus the sub-servers")
    ray_address: str | None = Field(None, description="a running Ray cluster (`auto`: this machine's); "
                                    "default: start a local one")
    cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (default: all)")


class EvalSettings(OnDevice):
    """Every method trains the same adapters from the same seed for the same steps and batch size."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, description="the model every method fine-tunes (see `splitfed models`)")
    tasks: list[str | TaskSpec] = Field(default_factory=lambda: ["cb"],
                                        description="shipped task names and/or task descriptions")
    methods: list[Method] = Field(default_factory=lambda: list(METHODS), description="rows of the table, "
                                  "in this order")
    clients: int = Field(3, ge=1, description="clients of the federated methods")
    steps: int = Field(36, ge=1, description="optimizer steps of every trainer")
    rounds: int = Field(3, ge=1, description="FedAvg rounds the steps are spread over")
    batch_size: int = Field(4, ge=1, description="examples per optimizer step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the adapters")
    lora_rank: int = Field(8, ge=1, description="LoRA rank (alpha = 2 x rank)")
    head: int | None = Field(None, ge=0, description="client blocks before the trunk (default 2; 1 if tiny)")
    tail: int | None = Field(None, ge=0, description="client blocks after the trunk (default 2; 1 if tiny)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration of the non-IID split")
    privacy: PrivacySettings | None = Field(None, description="the client-side defense of the "
                                            "federated-noise and federated-network rows (clipping and "
                                            "Gaussian noise with accounting, or a learned cut), e.g. "
                                            "privacy.forward.clip and .sigma")
    train_examples: int = Field(480, ge=1, description="training examples per task (shared out among "
                                                        "the clients); a file with more rows gives a "
                                                        "sample (select_examples)")
    eval_examples: int = Field(100, ge=1, description="held-out examples scored per task; a file with more "
                                                       "rows gives a sample (select_examples)")
    select_examples: Literal["sample", "first"] = Field(
        "sample", description="how train_examples and eval_examples choose rows from a file with more: "
                              "sample: a random choice drawn from seed, stratified by label for "
                              "classification (each label keeps its share), kept in file order; first: "
                              "the first rows in file order (how results before this setting were made)")
    max_length: int = Field(256, ge=16, description="tokens per training/scored sequence")
    long_rows: Literal["truncate", "refuse"] = Field(
        "truncate", description="a row longer than max_length: truncate (its prompt loses its start; "
                                "the run says how many rows and the first) or refuse (an error naming "
                                "the task, the file and the row, before the model loads)")
    max_new_tokens: int = Field(48, ge=1, description="generation tasks: tokens generated per answer")
    max_words: int = Field(200, ge=1, description="shipped generation tasks: words of passage kept")
    eval_batch_size: int = Field(8, ge=1, description="rows per scoring forward")
    seed: int = Field(0, description="seed of data order, shards and adapter initialisation")
    simulation: SimulationSettings = Field(default_factory=SimulationSettings,
                                           description="the federated-ray row's actors")
    output: Path = Field(Path("runs/eval"), description="where results.json, results.md and losses.png go")

    @field_validator("tasks")
    @classmethod
    def _some(cls, tasks: list[str | TaskSpec]) -> list[str | TaskSpec]:
        if not tasks:
            raise ValueError("give at least one task")
        return tasks

    def label(self, method: str) -> str:
        return METHOD_LABELS[method].format(clients=self.clients, alpha=self.alpha,
                                            sub_servers=self.simulation.sub_servers)
