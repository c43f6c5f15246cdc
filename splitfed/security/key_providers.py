"""Where the sealing key comes from: a file, an environment variable, or an external command (a KMS
client), optionally released only after attestation.

Keys are 32 bytes, written as 64 hex characters (files, variables and command output may also hold
base64). Error messages never contain key material.
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from splitfed.security.attestation import Attester, Evidence, Verifier
from splitfed.security.errors import KeyFileError, KeyProviderError
from splitfed.security.files import PRIVATE_MODE, read_private, write_file
from splitfed.security.sealing import KEY_BYTES, Algorithm, Sealer, new_key

DEFAULT_ENV = "SPLITFED_SEALING_KEY"


class KeyProvider(Protocol):
    def key(self, evidence: Evidence | None = None) -> bytes:
        """The 32-byte sealing key; ``evidence`` is passed on by an attested provider."""
        ...


def parse_key(text: bytes | str, source: str) -> bytes:
    """A 32-byte key from hex or base64 text."""
    value = text.strip() if isinstance(text, str) else text.decode("ascii", "replace").strip()
    for decode in (bytes.fromhex, lambda v: base64.b64decode(v, validate=True)):
        try:
            key = decode(value)
        except (ValueError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise KeyProviderError(f"{source} does not hold a {KEY_BYTES}-byte key as hex or base64")


def create_key_file(path: str | Path, overwrite: bool = False) -> Path:
    """Write a fresh random key (hex) to ``path`` with mode 0600; refuses to overwrite by default."""
    return write_file(Path(path), new_key().hex().encode() + b"\n", PRIVATE_MODE, overwrite)


class FileKeyProvider:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def key(self, evidence: Evidence | None = None) -> bytes:
        try:
            data = read_private(self.path, "sealing key file")
        except KeyFileError as error:
            raise KeyProviderError(str(error)) from None
        return parse_key(data, f"sealing key file {self.path}")


class EnvKeyProvider:
    def __init__(self, variable: str = DEFAULT_ENV) -> None:
        self.variable = variable

    def key(self, evidence: Evidence | None = None) -> bytes:
        value = os.environ.get(self.variable)
        if not value:
            raise KeyProviderError(f"environment variable {self.variable} is not set")
        return parse_key(value, f"environment variable {self.variable}")


class CommandKeyProvider:
    """Runs ``argv`` (e.g. a KMS client) and reads the key from its standard output. With attestation,
    the evidence goes to its standard input as JSON, so the KMS can verify it before releasing."""

    def __init__(self, argv: list[str], timeout_s: float = 30.0) -> None:
        if not argv:
            raise KeyProviderError("the key command is empty")
        self.argv = list(argv)
        self.timeout_s = timeout_s

    def key(self, evidence: Evidence | None = None) -> bytes:
        stdin = evidence.to_json() if evidence is not None else ""
        try:
            done = subprocess.run(self.argv, input=stdin, capture_output=True, text=True,
                                  timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise KeyProviderError(f"key command {self.argv[0]!r} failed to run: {error}") from None
        if done.returncode != 0:
            detail = done.stderr.strip().splitlines()[-1:] or [""]
            raise KeyProviderError(f"key command {self.argv[0]!r} exited with {done.returncode}: "
                                   f"{detail[0][:200]}")
        return parse_key(done.stdout, f"the output of key command {self.argv[0]!r}")


class AttestedKeyProvider:
    """Releases ``inner``'s key only after ``verifier`` accepts fresh evidence from ``attester``."""

    def __init__(self, inner: KeyProvider, attester: Attester, verifier: Verifier) -> None:
        self.inner, self.attester, self.verifier = inner, attester, verifier

    def key(self, evidence: Evidence | None = None) -> bytes:
        nonce = os.urandom(32)
        fresh = self.attester.evidence(nonce)
        self.verifier.verify(fresh, nonce)
        return self.inner.key(fresh)


class SealingSettings(BaseModel):
    """Sealing of the server's checkpoints and saved trunk state (``none``: stored in the clear)."""

    model_config = ConfigDict(extra="forbid")
    key_provider: Literal["none", "file", "env", "command"] = Field(
        "none", description="where the sealing key comes from")
    key_file: Path | None = Field(None, description="file: a key file from `splitfed sealing-key`")
    key_env: str = Field(DEFAULT_ENV, description="env: the variable holding the key (hex or base64)")
    key_command: list[str] | None = Field(None, description="command: argv of a program (e.g. a KMS "
                                                            "client) that prints the key")
    key_command_timeout_s: float = Field(30.0, gt=0, description="command: give up on the key program "
                                                                 "after this long")
    algorithm: Algorithm = Field("aes-256-gcm", description="the AEAD that seals (aes-256-gcm or "
                                                            "chacha20-poly1305)")

    @property
    def enabled(self) -> bool:
        return self.key_provider != "none"

    def provider(self) -> KeyProvider | None:
        if self.key_provider == "file":
            if self.key_file is None:
                raise KeyProviderError("sealing.key_provider=file needs sealing.key_file")
            return FileKeyProvider(self.key_file)
        if self.key_provider == "env":
            return EnvKeyProvider(self.key_env)
        if self.key_provider == "command":
            return CommandKeyProvider(self.key_command or [], self.key_command_timeout_s)
        return None

    def sealer(self, attester: Attester | None = None, verifier: Verifier | None = None) -> Sealer | None:
        """The sealer, or None when sealing is off; with an attester and verifier the key is released
        only to attested code."""
        provider = self.provider()
        if provider is None:
            return None
        if attester is not None and verifier is not None:
            provider = AttestedKeyProvider(provider, attester, verifier)
        return Sealer(provider.key(), self.algorithm)
