"""The safetensors files of a model directory, opened lazily: one tensor is read only when asked for.

A directory holds one ``model.safetensors``, or shards listed by ``model.safetensors.index.json``
(Hugging Face's layout), or (a part directory) the shards its manifest lists. Every file a party
reads is opened and its header checked before any tensor is read, so a truncated or corrupted file
is refused naming the file, before anything is loaded. Files are read with ``pread``, not mapped:
a mapped file's pages count in the process's RSS, and a 7B trunk read through a map would be counted
twice (the fp16 pages and the bf16 copy).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DEFAULT_SHARD_BYTES = 2**30


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
    def lazy_tensors(self, reads: TensorReads | None = None) -> Iterator[dict[str, Any]]:
        """Every tensor of the present files as a lazy slice (read on indexing, counted and checked in
        ``reads``), with every file's header checked first; the files are closed on exit."""
        reads = reads if reads is not None else TensorReads()
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
                    slices[key] = _ReadSlice(handle.get_slice(key), key, path, reads)
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


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes as a safetensors file stores them (little-endian, row-major)."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy()).hexdigest()


@dataclass
class TensorReads:
    """What was read through the lazy slices: a count, bytes, and the digests to check them against."""

    expected_sha256: dict[str, str] = field(default_factory=dict)  # tensor name -> digest (a part's manifest)
    tensors: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    every_bytes: int = 0  # call ``every`` after each such amount read (0: never)
    every: Callable[[], None] | None = None

    def record(self, key: str, path: Path, tensor: torch.Tensor) -> None:
        expected = self.expected_sha256.get(key)
        if expected is not None and tensor_sha256(tensor) != expected:
            raise ModelFileError(f"{path}: tensor {key} does not match the SHA-256 in the part's manifest "
                                 "(the file is corrupted or was changed after export)")
        with self.lock:
            before = self.bytes
            self.tensors += 1
            self.bytes += tensor.numel() * tensor.element_size()
            crossed = self.every_bytes and before // self.every_bytes != self.bytes // self.every_bytes
        if crossed and self.every is not None:
            self.every()


class _ReadSlice:
    """A lazy slice of one tensor: reading it is counted (and checked) and a read error names the file."""

    def __init__(self, inner: Any, key: str, path: Path, reads: TensorReads) -> None:
        self.inner, self.key, self.path, self.reads = inner, key, path, reads

    def get_shape(self) -> list[int]:
        return self.inner.get_shape()

    def get_dtype(self) -> str:
        return self.inner.get_dtype()

    def __getitem__(self, index: Any) -> torch.Tensor:
        try:
            tensor = self.inner[index]
        except (SafetensorError, OSError, RuntimeError) as error:
            raise ModelFileError(f"{self.path}: tensor {self.key} could not be read ({error})") from None
        self.reads.record(self.key, self.path, tensor)
        return tensor


class ShardWriter:
    """Writes tensors to numbered safetensors shards of at most ``limit`` bytes, then the index."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory, self.limit = directory, limit
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.weight_map: dict[str, int] = {}
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.limit:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        number = len(self.shards)
        save_file(self.pending, self.directory / f"part-{number:05d}.safetensors", metadata={"format": "pt"})
        for name in self.pending:
            self.weight_map[name] = number
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> dict[str, str]:
        """Name the shards ``model-0000k-of-0000n.safetensors``, write the index; ``{tensor: file}``."""
        if self.pending or not self.shards:
            self._flush()
        count = len(self.shards)
        names = {}
        for number in range(count):
            final = f"model-{number + 1:05d}-of-{count:05d}.safetensors"
            (self.directory / f"part-{number:05d}.safetensors").rename(self.directory / final)
            names[number] = final
        index = {"metadata": {"total_size": self.total_bytes},
                 "weight_map": {name: names[number] for name, number in sorted(self.weight_map.items())}}
        (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
        return dict(index["weight_map"])
