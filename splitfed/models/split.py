"""Split a causal LM into client head, server trunk and client tail."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from splitfed.models.families import FamilyAdapter, family_for
from splitfed.models.parts import HeadPart, TailPart, TrunkPart

log = logging.getLogger(__name__)


class PrivacyWarning(UserWarning):
    """A partition that exposes private data to the server."""


class PartitionError(ValueError):
    """A partition that does not fit the model."""


@dataclass(frozen=True)
class Partition:
    """How many decoder blocks the client keeps before (``head``) and after (``tail``) the trunk."""

    head: int
    tail: int

    def __post_init__(self) -> None:
        for name in ("head", "tail"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PartitionError(f"Partition.{name} must be a non-negative int, got {value!r}")

    def fits(self, num_layers: int) -> None:
        """Raise unless the trunk keeps at least one block of a model with ``num_layers`` blocks."""
        if self.head + self.tail >= num_layers:
            raise PartitionError(
                f"Partition(head={self.head}, tail={self.tail}) leaves no block for the server: "
                f"the model has {num_layers} blocks, so head + tail must be < {num_layers}."
            )

    def check(self, num_layers: int) -> None:
        """Raise unless the trunk keeps at least one block; warn loudly about exposing partitions."""
        self.fits(num_layers)
        if self.head == 0:
            _warn(
                "Partition head=0: the server receives raw token embeddings and can invert them "
                "to the private input text exactly. Keep at least one block on the client."
            )
        if self.tail == 0:
            _warn(
                "Partition tail=0: the server computes the logits and the loss, so labels and "
                "predictions leave the client."
            )

    def ranges(self, num_layers: int) -> tuple[range, range, range]:
        """Global block indices of head, trunk and tail."""
        self.check(num_layers)
        return (
            range(0, self.head),
            range(self.head, num_layers - self.tail),
            range(num_layers - self.tail, num_layers),
        )


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(message, PrivacyWarning, stacklevel=3)


class SplitModel(nn.Module):
    """A causal LM as three parts that together compute exactly what the whole model computes."""

    def __init__(
        self,
        head: HeadPart | None,
        trunk: TrunkPart | None,
        tail: TailPart | None,
        partition: Partition,
        family: FamilyAdapter,
    ) -> None:
        super().__init__()
        self.head = head
        self.trunk = trunk
        self.tail = tail
        self.partition = partition
        self.family = family
        self.config = next(part for part in (head, trunk, tail) if part is not None).config

    @property
    def parts(self) -> dict[str, nn.Module]:
        """The parts this process holds (a client holds no trunk, a server no head)."""
        held = {"head": self.head, "trunk": self.trunk, "tail": self.tail}
        return {role: part for role, part in held.items() if part is not None}

    def new_caches(self) -> tuple[DynamicCache, DynamicCache, DynamicCache]:
        """One empty KV cache per part."""
        return self.head.new_cache(), self.trunk.new_cache(), self.tail.new_cache()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        caches: tuple[DynamicCache, DynamicCache, DynamicCache] | None = None,
    ) -> torch.Tensor:
        """head -> trunk -> tail in one process; returns logits."""
        head_cache, trunk_cache, tail_cache = caches if caches is not None else (None, None, None)
        hidden = self.head(input_ids, attention_mask, position_ids, head_cache)
        hidden = self.trunk(hidden, attention_mask, position_ids, trunk_cache)
        return self.tail(hidden, attention_mask, position_ids, tail_cache)


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks of a supported model."""
    return family_for(model).num_layers(model.config)


ALL_ROLES = ("head", "trunk", "tail")


def split_model(model: nn.Module, partition: Partition, roles: tuple[str, ...] = ALL_ROLES) -> SplitModel:
    """Split ``model`` into head, trunk and tail that share its modules (no copy is made); only the
    ``roles`` asked for are built (the others are None: a part-loaded model holds only its own)."""
    family = family_for(model)
    head_range, trunk_range, tail_range = partition.ranges(family.num_layers(model.config))
    split = SplitModel(
        HeadPart(model, family, head_range) if "head" in roles else None,
        TrunkPart(model, family, trunk_range) if "trunk" in roles else None,
        TailPart(model, family, tail_range) if "tail" in roles else None,
        partition,
        family,
    )
    log.debug(
        "split %s (%d blocks): head %s, trunk %s, tail %s",
        model.config.model_type,
        family.num_layers(model.config),
        _span(head_range),
        _span(trunk_range),
        _span(tail_range),
    )
    return split


def _span(indices: range) -> str:
    return f"[{indices.start}:{indices.stop}]" if len(indices) else "[]"
