"""Partition settings shared by server and client configs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from splitfed.models import Partition


class PartitionSettings(BaseModel):
    """Blocks kept by the client before (head) and after (tail) the server's trunk."""

    model_config = ConfigDict(extra="forbid")
    head: int = Field(2, ge=0)
    tail: int = Field(2, ge=0)

    def partition(self) -> Partition:
        return Partition(self.head, self.tail)
