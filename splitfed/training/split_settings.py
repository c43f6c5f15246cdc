"""Settings that server and client configs share: the partition, the model and its adapters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitfed.layout import Layout
from splitfed.models import DEFAULT_MODEL, AdapterSpec, LoraSpec, Partition
from splitfed.models.devices import OnDevice
from splitfed.training.optim import OptimizerSettings


class PartitionSettings(BaseModel):
    """Blocks kept by the client before (head) and after (tail) the server's trunk, and the layout.

    three-part (default): the client keeps the head and the tail; labels and logits never leave it.
    two-part: the client keeps only the head; the server runs every later block, the final norm and
    the LM head, and receives the labels (it sees what the client trains the model to predict).
    """

    model_config = ConfigDict(extra="forbid")
    head: int = Field(2, ge=0, description="decoder blocks the client runs before the trunk (0: the server "
                                           "gets raw embeddings, which it can invert)")
    tail: int = Field(2, ge=0, description="decoder blocks the client runs after the trunk, before the final "
                                           "norm and LM head (0: logits and labels go to the server)")
    layout: Layout = Field(Layout.THREE_PART, description="three-part (client head + tail) or two-part "
                                                          "(client head only; labels go to the server)")
    head_max: int | None = Field(None, ge=0, description="server: the largest head a client may keep; each "
                                 "client then picks its head in [head, head_max] (write `head: [1, 4]` "
                                 "for head 1, head_max 4). Unset: every client keeps `head`")
    tail_max: int | None = Field(None, ge=0, description="server: the largest tail a client may keep, as "
                                 "head_max (`tail: [1, 4]`)")

    @model_validator(mode="before")
    @classmethod
    def _ranges(cls, data: Any) -> Any:
        """``head: [lo, hi]`` is ``head: lo, head_max: hi`` (the same for tail)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for side in ("head", "tail"):
            value = data.get(side)
            if isinstance(value, list | tuple):
                if len(value) != 2:
                    raise ValueError(f"partition.{side}: a range is [smallest, largest], got {list(value)}")
                if f"{side}_max" in data:
                    raise ValueError(f"partition.{side}: give a range or {side}_max, not both")
                data[side], data[f"{side}_max"] = value
        return data

    @model_validator(mode="after")
    def _two_part_has_no_tail(self) -> PartitionSettings:
        if self.layout == Layout.TWO_PART:
            if "tail" in self.model_fields_set and self.tail != 0:
                raise ValueError("the two-part layout has no client tail: leave tail unset or 0")
            self.tail = 0
            if self.ranged:
                raise ValueError("partition.head_max/tail_max: the two-part layout takes one partition for "
                                 "all clients (its server runs every block after the head)")
        for side in ("head", "tail"):
            smallest, largest = getattr(self, side), getattr(self, f"{side}_max")
            if largest is not None and largest < smallest:
                raise ValueError(f"partition.{side}_max {largest} is smaller than {side} {smallest}")
        return self

    @property
    def largest_head(self) -> int:
        return self.head if self.head_max is None else self.head_max

    @property
    def largest_tail(self) -> int:
        return self.tail if self.tail_max is None else self.tail_max

    @property
    def ranged(self) -> bool:
        """Whether clients may pick their own partition within a range (a server setting)."""
        return self.largest_head > self.head or self.largest_tail > self.tail

    def partition(self) -> Partition:
        """The server's trunk spans the widest range: the smallest head and tail."""
        return Partition(self.head, self.tail)

    def accepts(self, head: int, tail: int) -> bool:
        """Whether a client keeping ``head`` and ``tail`` blocks fits this (server) range."""
        return self.head <= head <= self.largest_head and self.tail <= tail <= self.largest_tail


class SplitTrainingSettings(OnDevice):
    """What server and clients must agree on: the model, its partition, the adapters and the seed."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, description="smollm2, a tiny test model, a local Hugging Face "
                                                 "directory or a .gguf file (`splitfed models` lists them)")
    seed: int = Field(0, description="seed of the adapters' initialisation (and of the client's data)")
    partition: PartitionSettings = Field(PartitionSettings(), description="which blocks the client keeps")
    adapter: AdapterSpec = Field(LoraSpec(), description="the trainable adapter of every part (kind: lora "
                                                        "or prefix); the base weights stay frozen")
    optimizer: OptimizerSettings = Field(OptimizerSettings(), description="AdamW of this side's adapters")
