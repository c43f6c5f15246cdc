"""Ed25519 identities of clients and servers, their key files and one-line public-key format.

A private key is stored as `<name>.key` (PEM PKCS8, mode 0600), the public key as `<name>.pub`, one line
`splitfed-ed25519 <base64 raw key> <name>` like an ssh `authorized_keys` entry; allow-lists hold such lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from splitfed.security.errors import AuthenticationError, KeyFileError
from splitfed.security.files import PRIVATE_MODE, PUBLIC_MODE, read_private, refuse_existing, write_file

KEY_TYPE = "splitfed-ed25519"
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: object) -> str:
    """Return `name` if it is a valid identity name (1-64 of `A-Za-z0-9._-`, not starting with . _ -)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid identity name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                         "starting with a letter or digit")
    return name


@dataclass(frozen=True, eq=False)
class PublicIdentity:
    """A named Ed25519 public key."""

    name: str
    raw: bytes

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_SIZE:
            raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} raw bytes")

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check `signature` over `data`; raise `AuthenticationError` if it is not this key's."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("data must be bytes")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise AuthenticationError(f"bad signature for {self.name!r}")
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, bytes(data))
        except (InvalidSignature, ValueError):
            raise AuthenticationError(f"bad signature for {self.name!r}") from None

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the raw public key, for humans to compare out of band."""
        return hashlib.sha256(self.raw).hexdigest()

    def same_key(self, other: PublicIdentity) -> bool:
        """Whether `other` holds the same public key (constant-time)."""
        return hmac.compare_digest(self.raw, other.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicIdentity):
            return NotImplemented
        return self.name == other.name and self.same_key(other)

    def __hash__(self) -> int:
        return hash((self.name, self.raw))

    def to_text(self) -> str:
        """The one-line form `splitfed-ed25519 <base64> <name>`."""
        return f"{KEY_TYPE} {base64.b64encode(self.raw).decode('ascii')} {self.name}"

    @classmethod
    def from_text(cls, line: str) -> PublicIdentity:
        """Parse the one-line form; `KeyFileError` says what is wrong."""
        parts = line.split()
        if len(parts) != 3:
            raise KeyFileError(f"expected '{KEY_TYPE} <base64 key> <name>', got {len(parts)} fields")
        kind, encoded, name = parts
        if kind != KEY_TYPE:
            raise KeyFileError(f"unsupported key type {kind[:40]!r} (expected {KEY_TYPE!r})")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError("public key is not valid base64") from None
        try:
            return cls(name, raw)
        except ValueError as error:
            raise KeyFileError(str(error)) from None

    def __repr__(self) -> str:
        return f"PublicIdentity(name={self.name!r}, fingerprint={self.fingerprint[:16]}...)"


class Identity:
    """A named Ed25519 private key. Never printed, logged or serialized."""

    __slots__ = ("_key", "_name")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        self._name = check_name(name)
        self._key = private_key

    @classmethod
    def generate(cls, name: str) -> Identity:
        """A fresh random identity."""
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def name(self) -> str:
        return self._name

    @property
    def public(self) -> PublicIdentity:
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicIdentity(self._name, raw)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of `data` (64 bytes)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("data must be bytes")
        return self._key.sign(bytes(data))

    def save(self, directory: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
        """Write `<name>.key` (PEM PKCS8, mode 0600) and `<name>.pub`; return their paths."""
        directory = Path(directory)
        key_path, pub_path = directory / f"{self._name}.key", directory / f"{self._name}.pub"
        refuse_existing([key_path, pub_path], overwrite)
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        write_file(key_path, pem, PRIVATE_MODE, overwrite)
        write_file(pub_path, (self.public.to_text() + "\n").encode("ascii"), PUBLIC_MODE, overwrite)
        return key_path, pub_path

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> Identity:
        """Read a `.key` file written by `save`; the name defaults to the file's stem.

        Raises `KeyFileError` if the file is missing, unreadable, encrypted or not an Ed25519 key, and
        warns (`InsecurePermissionsWarning`) if other users may read it.
        """
        path = Path(path)
        name = check_name(path.stem if name is None else name)
        pem = read_private(path, "identity key file")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise KeyFileError(f"{path} is encrypted; splitfed expects an unencrypted PKCS8 key") from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"{path} is not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 private key")
        return cls(name, key)

    def __repr__(self) -> str:
        return f"Identity(name={self._name!r}, fingerprint={self.public.fingerprint[:16]}...)"

    def __reduce__(self) -> object:
        raise TypeError("an Identity holds a private key and cannot be serialized or copied")
