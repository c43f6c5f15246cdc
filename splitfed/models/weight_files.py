"""The safetensors files of a model directory, opened lazily: one tensor is read only when asked for.

A directory holds one ``model.safetensors``, or shards listed by ``model.safetensors.index.json``
(Hugging Face's layout), or (a part directory) the shards its manifest lists. Every file a party
reads is opened and its header checked before any tensor is read, so a truncated or corrupted file
is refused naming the file, before anything is loaded. Files are read with ``pread``, not mapped:
a mapped file's pages count in the process's RSS, and a 7B trunk read through a map would be counted
twice (the fp16 pages and the bf16 copy).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class ModelFileError(ValueError):
    """A model file that is missing, truncated, corrupted, or does not fit the model."""


@dataclass
class WeightFiles:
    """Which file holds which tensor, from the index (or the single file's header)."""

    directory: Path
    files: dict[str, list[str]]  # file name -> its tensor names (from the index or the header)
    missing: dict[str, list[str]] = field(default_factory=dict)  # files the index names that do not exist

    @classmethod
    def find(cls, directory: Path) -> WeightFiles:
        """The weight files of ``directory``; a directory with none is refused."""
        index = directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not a mapping")
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ModelFileError(f"{index}: not a safetensors index ({error})") from None
            files: dict[str, list[str]] = {}
            for name, file in weight_map.items():
                files.setdefault(str(file), []).append(str(name))
            present = {f: keys for f, keys in files.items() if (directory / f).is_file()}
            missing = {f: keys for f, keys in files.items() if f not in present}
            return cls(directory, present, missing)
        if (directory / SINGLE_FILE).is_file():
            return cls(directory, {SINGLE_FILE: []})
        shards = sorted(p.name for p in directory.glob("*.safetensors"))
        if shards:
            return cls(directory, {name: [] for name in shards})
        raise ModelFileError(f"{directory}: no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors file (a .bin "
                             "checkpoint is not read: convert it to safetensors)")

    def describe_missing(self) -> str:
        """A sentence naming the shards the index lists that are not on disk ('' when none)."""
        if not self.missing:
            return ""
        names = ", ".join(sorted(self.missing))
        return f"; the index {self.directory / INDEX_FILE} names shard(s) that do not exist: {names}"

    @contextmanager
    def lazy_tensors(self) -> Iterator[dict[str, Any]]:
        """Every tensor of the present files as a lazy slice (read on indexing), with file headers
        checked first; the files are closed on exit."""
        handles = []
        slices: dict[str, Any] = {}
        try:
            for name in sorted(self.files):
                path = self.directory / name
                try:
                    handle = safe_open(path, framework="pt", device="cpu", backend="pread")
                except (SafetensorError, OSError) as error:
                    raise ModelFileError(f"{path}: truncated or corrupted safetensors file "
                                         f"({error})") from None
                handles.append(handle)
                for key in handle.keys():  # noqa: SIM118 (a file handle, not a dict)
                    slices[key] = handle.get_slice(key)
            yield slices
        finally:
            slices.clear()
            for handle in handles:
                handle.__exit__(None, None, None)

    def source_of(self, key: str) -> str:
        """The file that holds checkpoint tensor ``key`` (as far as the index says)."""
        for name, keys in self.files.items():
            if key in keys:
                return str(self.directory / name)
        return str(self.directory)


def tensor_bytes(slice_: Any) -> int:
    """Bytes a lazy slice occupies in its file."""
    count = 1
    for size in slice_.get_shape():
        count *= int(size)
    return count * DTYPE_BYTES.get(slice_.get_dtype(), 4)
