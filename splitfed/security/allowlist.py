"""The server's allow-list of client public keys, with revocation."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from splitfed.security.errors import KeyFileError, UnknownClientError
from splitfed.security.identity import PublicIdentity


class AllowList:
    """Enrolled clients by name. Revoked names stay refused even if added again.

    Files hold one `splitfed-ed25519 <base64> <name>` line per client; blank lines and `#` comments are
    ignored. The same name with two different keys is an error naming both places.
    """

    def __init__(self, identities: Iterable[PublicIdentity] = ()) -> None:
        self._keys: dict[str, PublicIdentity] = {}
        self._origins: dict[str, str] = {}
        self._revoked: set[str] = set()
        self._lock = threading.Lock()
        for identity in identities:
            self.add(identity)

    @classmethod
    def from_file(cls, path: str | Path) -> AllowList:
        """Read an allow-list file of public-key lines."""
        allowlist = cls()
        allowlist.add_file(path)
        return allowlist

    @classmethod
    def from_directory(cls, directory: str | Path) -> AllowList:
        """Read every `*.pub` file of `directory` (sorted by name)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise KeyFileError(f"allow-list directory not found: {directory}")
        allowlist = cls()
        for path in sorted(directory.glob("*.pub")):
            allowlist.add_file(path)
        return allowlist

    @classmethod
    def load(cls, path: str | Path) -> AllowList:
        """`from_directory` for a directory, else `from_file`."""
        return cls.from_directory(path) if Path(path).is_dir() else cls.from_file(path)

    def add_file(self, path: str | Path) -> None:
        """Add every public-key line of `path`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyFileError(f"allow-list file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise KeyFileError(f"cannot read allow-list file {path}: {type(error).__name__}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                identity = PublicIdentity.from_text(line)
            except KeyFileError as error:
                raise KeyFileError(f"{path}:{number}: {error}") from None
            self.add(identity, origin=f"{path}:{number}")

    def add(self, identity: PublicIdentity, origin: str = "<added>") -> None:
        """Enrol `identity`; adding the same name and key again is a no-op."""
        with self._lock:
            known = self._keys.get(identity.name)
            if known is not None and not known.same_key(identity):
                raise KeyFileError(f"{origin}: duplicate name {identity.name!r} with a different key "
                                   f"(first at {self._origins[identity.name]})")
            if known is None:
                self._keys[identity.name] = identity
                self._origins[identity.name] = origin

    def get(self, name: str) -> PublicIdentity:
        """The enrolled key of `name`; `UnknownClientError` if unknown or revoked."""
        if not isinstance(name, str):
            raise UnknownClientError("a client name must be a string")
        with self._lock:
            if name in self._revoked:
                raise UnknownClientError(f"client {name!r} is revoked")
            identity = self._keys.get(name)
        if identity is None:
            raise UnknownClientError(f"client {name!r} is not in the allow-list")
        return identity

    def revoke(self, name: str) -> None:
        """Refuse `name` from now on (sessions already open are the caller's to close)."""
        with self._lock:
            if name not in self._keys:
                raise UnknownClientError(f"client {name!r} is not in the allow-list")
            self._revoked.add(name)

    def names(self) -> list[str]:
        """Enrolled, unrevoked names, sorted."""
        with self._lock:
            return sorted(set(self._keys) - self._revoked)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return isinstance(name, str) and name in self._keys and name not in self._revoked

    def __len__(self) -> int:
        return len(self.names())
