"""The manifest of a part directory: which base, which partition, which tensors, and their digests.

``splitfed parts`` writes a directory a party can be shipped and train from alone: config.json, the
tokenizer, its own tensors as safetensors and ``splitfed_manifest.json``. Loading such a directory
checks that it holds what the party needs, and every tensor's SHA-256 as it is read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from splitfed.models.base_identity import MANIFEST_FILE
from splitfed.models.part_loading import PartNeeds
from splitfed.models.weight_files import ModelFileError

FORMAT = "splitfed-part/1"


class PartMismatchError(ModelFileError):
    """A part directory that does not hold what this party needs."""


@dataclass(frozen=True)
class PartManifest:
    """What a part directory holds."""

    model: str  # the model setting it was exported from
    base_id: str | None
    model_type: str
    num_layers: int
    head: int
    tail: int
    layout: str
    roles: tuple[str, ...]
    blocks: tuple[int, ...]
    embedding: bool
    final: bool
    dtype: str
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> file, sha256, shape, dtype
    format: str = FORMAT

    @property
    def needs(self) -> PartNeeds:
        return PartNeeds(frozenset(self.blocks), self.embedding, self.final)

    def digests(self) -> dict[str, str]:
        """Tensor name -> SHA-256 of its bytes as stored."""
        return {name: str(entry["sha256"]) for name, entry in self.tensors.items()}

    def describe(self) -> str:
        return (f"{' + '.join(self.roles)} of {self.model} (partition head {self.head}, tail {self.tail}, "
                f"{self.layout}; {self.needs.describe()}; {self.dtype})")

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, directory: Path) -> PartManifest | None:
        """The manifest of ``directory``, None when it is not a part directory; a malformed one is
        refused naming the file."""
        path = directory / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, this splitfed reads {FORMAT!r}")
            data["roles"] = tuple(data["roles"])
            data["blocks"] = tuple(int(block) for block in data["blocks"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ModelFileError(f"{path}: not a splitfed part manifest ({error})") from None

    def check_covers(self, needs: PartNeeds, directory: Path, dtype: str) -> None:
        """Refuse a party whose needs this part does not hold (another partition or layout)."""
        lacking = sorted(needs.blocks - set(self.blocks))
        missing = [*(["the embedding"] if needs.embedding and not self.embedding else []),
                   *(["the final norm and LM head"] if needs.final and not self.final else []),
                   *([f"blocks {lacking}"] if lacking else [])]
        if missing:
            raise PartMismatchError(f"{directory} holds the {self.describe()}; this party also needs "
                                    f"{', '.join(missing)}: export the part for this partition and layout "
                                    "with `splitfed parts`")
        if dtype != self.dtype:
            raise PartMismatchError(f"{directory} holds {self.dtype} weights and this party asks for "
                                    f"{dtype}: set dtype: {self.dtype}, or export the part again with "
                                    f"--dtype {dtype}")
