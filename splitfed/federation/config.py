"""Typed settings of a federated split fine-tuning run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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

    @property
    def total_steps(self) -> int:
        """Optimizer steps on the trunk over the whole run (one per client step)."""
        return self.rounds * self.local_steps * self.clients
