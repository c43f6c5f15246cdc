"""Checkpoints written atomically and checked on load; the newest intact one wins.

A checkpoint is a folder ``ckpt-<step>`` holding ``tensors.safetensors`` (never pickle), ``meta.json``
and ``MANIFEST.json`` (the SHA-256 of each file). It is written into a temporary folder, every file
fsynced, then renamed into place and the parent fsynced, so a crash leaves either the whole
checkpoint or none. On load, a checkpoint whose manifest, checksums or files do not hold is skipped
with a warning and the previous one is used. A failed write (a full disk, say) removes its partial
folder and raises ``CheckpointError``; the previous checkpoints are untouched.

With a ``sealer`` (see ``splitfed.security.sealing``), both files are sealed with AEAD, bound to their
name and step, and a store with a sealer reads only sealed checkpoints. A sealed checkpoint that does
not open (tampered, truncated, another key, renamed to another step) is an attack, not a crash: it
raises ``CheckpointError`` with the reason instead of falling back to an older one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from splitfed.finite import nonfinite_names

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "ckpt-"
TENSORS = "tensors.safetensors"
META = "meta.json"
MANIFEST = "MANIFEST.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no intact checkpoint could be read."""


class BlobSealer(Protocol):
    """Seals and opens bytes (``splitfed.security.Sealer``); ``open`` raises on any failure."""

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes: ...

    def open(self, blob: bytes, context: bytes = b"", what: str = "sealed data") -> bytes: ...


def _context(name: str, step: int) -> bytes:
    return f"splitfed checkpoint {name} step {step}".encode()


@dataclass
class Checkpoint:
    """What a checkpoint holds: a step number, named tensors and JSON metadata."""

    step: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    path: Path | None = None


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointStore:
    """The checkpoints of one process in ``directory``; keeps the newest ``keep``."""

    def __init__(self, directory: str | Path, keep: int = 2, sealer: BlobSealer | None = None) -> None:
        if keep < 1:
            raise ValueError("keep at least one checkpoint")
        self.directory = Path(directory)
        self.keep = keep
        self.sealer = sealer

    def _folders(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if path.is_dir() and path.name.startswith(PREFIX) and path.name[len(PREFIX):].isdigit():
                found.append((int(path.name[len(PREFIX):]), path))
        return sorted(found)

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically; returns its folder. Raises ``CheckpointError`` on failure."""
        if checkpoint.step < 0:
            raise ValueError("a checkpoint step is a non-negative integer")
        names = nonfinite_names(checkpoint.tensors)
        if names:
            kept = f"; the previous checkpoint {self._folders()[-1][1]} is kept" if self._folders() else ""
            raise CheckpointError(f"checkpoint {checkpoint.step} not written: {len(names)} tensor(s) hold "
                                  f"non-finite values ({', '.join(names[:5])}){kept}")
        final = self.directory / f"{PREFIX}{checkpoint.step:010d}"
        staging = self.directory / f".tmp-{PREFIX}{checkpoint.step:010d}-{os.getpid()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            tensors = {name: t.detach().cpu().contiguous() for name, t in checkpoint.tensors.items()}
            meta = {"step": checkpoint.step, **checkpoint.meta}
            files = {
                TENSORS: save_safetensors(tensors or {"_empty": torch.zeros(0)}),
                META: json.dumps(meta, indent=1, sort_keys=True).encode(),
            }
            if self.sealer is not None:
                files = {name: self.sealer.seal(data, _context(name, checkpoint.step))
                         for name, data in files.items()}
            for name, data in files.items():
                _write_file(staging / name, data)
            manifest = {"format": FORMAT, "step": checkpoint.step, "sealed": self.sealer is not None,
                        "files": {name: {"sha256": _digest(data), "bytes": len(data)}
                                  for name, data in files.items()}}
            _write_file(staging / MANIFEST, json.dumps(manifest, indent=1).encode())
            _fsync_dir(staging)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            _fsync_dir(self.directory)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            previous = self._folders()
            kept = f"; the previous checkpoint {previous[-1][1]} is intact" if previous else ""
            reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
            raise CheckpointError(f"could not write checkpoint {checkpoint.step} in {self.directory}: "
                                  f"{reason}{kept}") from error
        for _, old in self._folders()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _read(self, path: Path) -> Checkpoint:
        manifest = json.loads((path / MANIFEST).read_bytes())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {manifest.get('format')!r}")
        if self.sealer is not None or manifest.get("sealed"):
            return self._read_sealed(path, manifest)
        contents = {}
        for name in (TENSORS, META):
            data = (path / name).read_bytes()
            expected = manifest["files"][name]
            if len(data) != expected["bytes"] or _digest(data) != expected["sha256"]:
                raise ValueError(f"{name} is truncated or corrupt (checksum mismatch)")
            contents[name] = data
        tensors = load_safetensors(contents[TENSORS])
        tensors.pop("_empty", None)
        meta = json.loads(contents[META])
        step = meta.pop("step")
        if step != manifest["step"]:
            raise ValueError("the manifest and the metadata disagree on the step")
        return Checkpoint(step, tensors, meta, path)

    def _read_sealed(self, path: Path, manifest: dict[str, Any]) -> Checkpoint:
        if self.sealer is None:
            raise CheckpointError(f"checkpoint {path} is sealed: configure the sealing key provider "
                                  "to load it")
        step = int(path.name[len(PREFIX):])
        contents = {}
        for name in (TENSORS, META):
            try:
                blob = (path / name).read_bytes()
                contents[name] = self.sealer.open(blob, _context(name, step), what=f"{path / name}")
            except Exception as error:  # SealingError or OSError: refuse, never fall back
                raise CheckpointError(f"refusing sealed checkpoint {path}: {error}") from error
        tensors = load_safetensors(contents[TENSORS])
        tensors.pop("_empty", None)
        meta = json.loads(contents[META])
        if meta.pop("step") != step:
            raise CheckpointError(f"refusing sealed checkpoint {path}: its step does not match its name")
        return Checkpoint(step, tensors, meta, path)

    def latest(self) -> Checkpoint | None:
        """The newest intact checkpoint, or None if there is none at all; corrupt ones are skipped (with a
        warning). Raises ``CheckpointError`` if checkpoints exist but none is intact."""
        folders = self._folders()
        for _, path in reversed(folders):
            try:
                return self._read(path)
            except CheckpointError:
                raise
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("checkpoint %s is unusable (%s); trying the previous one", path, error)
        if folders:
            raise CheckpointError(f"none of the {len(folders)} checkpoints in {self.directory} is intact")
        return None
