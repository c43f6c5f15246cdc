"""The cloze example: a prompt, its candidate answers and the index of the right one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClozeExample:
    """One multiple-choice cloze item.

    ``options`` are the answer texts exactly as they are appended to ``prompt``
    (e.g. ``" yes"``, with its leading space); ``label`` indexes the correct one.
    """

    prompt: str
    options: list[str]
    label: int

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or not isinstance(self.label, int):
            raise TypeError(f"label must be an int, got {self.label!r}")
        if len(self.options) < 2:
            raise ValueError(f"need at least 2 options, got {self.options!r}")
        if not 0 <= self.label < len(self.options):
            raise ValueError(f"label {self.label} out of range for {len(self.options)} options")

    @property
    def answer(self) -> str:
        """The correct option text."""
        return self.options[self.label]
