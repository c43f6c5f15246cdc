"""Which parts of the model a client keeps: the one place the layout names are spelled, and the rule
for which trunk blocks a server runs for a client."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Layout(StrEnum):
    """three-part: the client keeps the head and the tail (labels and logits never leave it);
    two-part: the client keeps only the head, and the server runs every later block, the final norm,
    the LM head and the loss, so it receives the labels. A ``str``, so configs and the wire carry it
    as its value."""

    THREE_PART = "three-part"
    TWO_PART = "two-part"


@dataclass(frozen=True)
class TrunkRange:
    """The blocks a trunk holds, ``[start, end)``, and the sub-ranges it runs for clients that pick their
    own partition: from a block up to ``latest_start`` to one from ``earliest_end``. Server and client
    build it from the same numbers (``SessionLimits``: trunk_start, trunk_end, first_block_max,
    end_block_min; 0 meaning the trunk's own), so both apply one rule."""

    start: int
    end: int
    latest_start: int
    earliest_end: int

    @classmethod
    def of(cls, start: int, end: int, first_block_max: int = 0, end_block_min: int = 0) -> TrunkRange:
        return cls(start, end, max(start, first_block_max), end_block_min or end)

    @property
    def ranged(self) -> bool:
        """Whether clients may leave the trunk fewer blocks than it holds."""
        return (self.latest_start, self.earliest_end) != (self.start, self.end)

    def accepts(self, first: int, end: int) -> bool:
        """Whether the trunk runs ``[first, end)`` for a client."""
        return (self.start <= first <= self.latest_start and self.earliest_end <= end <= self.end
                and first < end)

    def describe(self) -> str:
        return (f"a start in [{self.start}, {self.latest_start}] and an end in [{self.earliest_end}, "
                f"{self.end}]")
