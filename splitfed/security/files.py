"""Writing key and certificate files: private ones with mode 0600, never silently overwriting."""

from __future__ import annotations

import os
import stat
import tempfile
import warnings
from pathlib import Path

from splitfed.security.errors import InsecurePermissionsWarning, KeyFileError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Raise `FileExistsError` if any of `paths` exists and `overwrite` is false."""
    if overwrite:
        return
    for path in paths:
        if path.exists():
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")


def write_file(path: Path, data: bytes, mode: int, overwrite: bool = False) -> Path:
    """Write `data` to `path` created with `mode` from the start (no window with looser permissions).

    Without `overwrite` the file must not exist (`O_EXCL`); with it, the file is replaced atomically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        _write_fd(fd, data, mode)
        return path
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        _write_fd(fd, data, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_fd(fd: int, data: bytes, mode: int) -> None:
    with os.fdopen(fd, "wb") as handle:
        if hasattr(os, "fchmod"):
            os.fchmod(handle.fileno(), mode)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_private(path: Path, what: str) -> bytes:
    """Read a private file, warning if other users may read or write it; `KeyFileError` if unreadable."""
    path = Path(path)
    try:
        info = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} is a directory, not a file: {path}") from None
    except OSError as error:
        raise KeyFileError(f"cannot read {what} {path}: {error.strerror or type(error).__name__}") from None
    if os.name == "posix" and stat.S_IMODE(info.st_mode) & 0o077:
        warnings.warn(f"{what} {path} has mode {stat.S_IMODE(info.st_mode):o}; other users may read it "
                      f"(run: chmod 600 {path})", InsecurePermissionsWarning, stacklevel=3)
    return data
