"""Settings that server and client configs share: the partition, the model and its adapters."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from splitfed.models import DEFAULT_MODEL, AdapterSpec, LoraSpec, Partition
from splitfed.training.optim import OptimizerSettings


class PartitionSettings(BaseModel):
    """Blocks kept by the client before (head) and after (tail) the server's trunk."""

    model_config = ConfigDict(extra="forbid")
    head: int = Field(2, ge=0)
    tail: int = Field(2, ge=0)

    def partition(self) -> Partition:
        return Partition(self.head, self.tail)


class SplitTrainingSettings(BaseModel):
    """What server and clients must agree on: the model, its partition, the adapters and the seed."""

    model_config = ConfigDict(extra="forbid")
    model: str = DEFAULT_MODEL
    seed: int = Field(0, description="seed of the adapters' initialisation (and of the client's data)")
    partition: PartitionSettings = PartitionSettings()
    adapter: AdapterSpec = LoraSpec()
    optimizer: OptimizerSettings = OptimizerSettings()
