"""Typed settings of a federated split fine-tuning run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitfed.models import AdapterSpec, LoraSpec, SparseSpec
from splitfed.privacy import PrivacySettings
from splitfed.training.optim import OptimizerSettings
from splitfed.training.split_settings import PartitionSettings


class FederationSettings(BaseModel):
    """Rounds of sequential split training followed by FedAvg of the clients' adapters."""

    model_config = ConfigDict(extra="forbid")
    clients: int = Field(3, ge=1)
    rounds: int = Field(3, ge=1)
    local_steps: int = Field(4, ge=1, description="steps per client per round")
    batch_size: int = Field(4, ge=1)
    seed: int = 0
    partition: PartitionSettings = PartitionSettings()
    adapter: AdapterSpec = LoraSpec()
    optimizer: OptimizerSettings = OptimizerSettings()
    privacy: PrivacySettings = PrivacySettings()
    sparse: SparseSpec | None = Field(None, description="sparse fine-tuning of the server trunk's base "
                                                        "weights next to its adapter")
    client_partitions: list[PartitionSettings] | None = Field(
        None, description="each client its own partition (one per client, each within `partition`'s "
                          "range: head..head_max, tail..tail_max); unset: every client keeps `partition`")

    @model_validator(mode="after")
    def _client_partitions_fit(self) -> FederationSettings:
        if self.client_partitions is None:
            return self
        if getattr(self.adapter, "kind", "lora") == "prefix":
            raise ValueError("client_partitions: a prefix adapter covers all of a part's blocks; clients "
                             "with "
                             "their own partitions take adapter kind lora")
        if len(self.client_partitions) != self.clients:
            raise ValueError(f"client_partitions: {len(self.client_partitions)} given for {self.clients} "
                             "clients")
        for index, own in enumerate(self.client_partitions):
            if own.layout != self.partition.layout or not self.partition.accepts(own.head, own.tail):
                server = self.partition
                raise ValueError(f"client_partitions[{index}]: head {own.head}, tail {own.tail} is outside "
                                 f"the server's range (head {server.head}..{server.head_max}, tail "
                                 f"{server.tail}..{server.tail_max})")
        return self

    def client_partition(self, index: int) -> PartitionSettings:
        """Client ``index``'s partition."""
        return self.partition if self.client_partitions is None else self.client_partitions[index]

    @property
    def total_steps(self) -> int:
        """Optimizer steps on the trunk over the whole run (one per client step)."""
        return self.rounds * self.local_steps * self.clients
