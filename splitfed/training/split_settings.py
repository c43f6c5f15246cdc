"""Settings that server and client configs share: the partition, the model and its adapters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitfed.layout import Layout
from splitfed.models import DEFAULT_MODEL, AdapterSpec, LoraSpec, Partition
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

    @model_validator(mode="after")
    def _two_part_has_no_tail(self) -> PartitionSettings:
        if self.layout == Layout.TWO_PART:
            if "tail" in self.model_fields_set and self.tail != 0:
                raise ValueError("the two-part layout has no client tail: leave tail unset or 0")
            self.tail = 0
        return self

    def partition(self) -> Partition:
        return Partition(self.head, self.tail)


class SplitTrainingSettings(BaseModel):
    """What server and clients must agree on: the model, its partition, the adapters and the seed."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL, description="smollm2, a tiny test model, a local Hugging Face "
                                                 "directory or a .gguf file (`splitfed models` lists them)")
    seed: int = Field(0, description="seed of the adapters' initialisation (and of the client's data)")
    partition: PartitionSettings = Field(PartitionSettings(), description="which blocks the client keeps")
    adapter: AdapterSpec = Field(LoraSpec(), description="the trainable adapter of every part (kind: lora "
                                                        "or prefix); the base weights stay frozen")
    optimizer: OptimizerSettings = Field(OptimizerSettings(), description="AdamW of this side's adapters")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of this side's frozen base weights and of its computation (half: half "
                               "the memory); adapters and optimizer state stay float32, and hidden states "
                               "are converted at the cut to the wire codec's dtype")
