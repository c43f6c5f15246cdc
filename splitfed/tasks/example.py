"""The cloze example: a prompt, its candidate answers and the index of the right one."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClozeExample:
    """One multiple-choice cloze item.

    ``options`` are the answer texts exactly as they are appended to ``prompt``
    (e.g. ``" yes"``, with its leading space); ``label`` indexes the correct one.
    ``private_spans`` are the character ranges of ``prompt`` that come from the row's own text (not
    the template); empty when the template does not say (then the whole prompt counts as private).
    """

    prompt: str
    options: list[str]
    label: int
    private_spans: tuple[tuple[int, int], ...] = field(default=(), compare=False)
    source: str = field(default="", compare=False, repr=False)  # "file: row N", for error messages

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


@dataclass(frozen=True)
class GenerationExample:
    """One generation item: a chat turn (``system`` + ``user``) and its reference answer(s).

    ``target`` is what training teaches; ``references`` (``target`` first) are what the metric
    compares the generated text with (CoQA has several per question).
    """

    user: str
    target: str
    system: str | None = None
    references: tuple[str, ...] = ()
    source: str = field(default="", compare=False, repr=False)  # "file: row N", for error messages

    def __post_init__(self) -> None:
        if not self.user.strip():
            raise ValueError("empty prompt")
        if not self.target.strip():
            raise ValueError("empty target")
        if not self.references:
            object.__setattr__(self, "references", (self.target,))
