"""Sealing data at rest: AEAD (AES-256-GCM or ChaCha20-Poly1305) under a 32-byte key.

A sealed blob is ``header || ciphertext+tag`` where the header holds a magic string, the algorithm,
an 8-byte key id (a keyed hash of the key, so a wrong key is named as such instead of "corrupt"), a
random 96-bit nonce and the ciphertext length (so truncation is named as such). The header and a
caller-chosen ``context`` (e.g. a checkpoint file name) are the associated data: moving a sealed file
to another slot, or editing any byte, makes it fail to open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from splitfed.security.errors import SealingError

MAGIC = b"SFSEAL1\x00"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
Algorithm = Literal["aes-256-gcm", "chacha20-poly1305"]
_ALGORITHMS: dict[str, tuple[int, type]] = {"aes-256-gcm": (1, AESGCM),
                                             "chacha20-poly1305": (2, ChaCha20Poly1305)}
_BY_CODE = {code: (name, cls) for name, (code, cls) in _ALGORITHMS.items()}
_HEADER = struct.Struct(">8sB8s12sQ")  # magic, algorithm, key id, nonce, ciphertext length


def key_id(key: bytes) -> bytes:
    """8 bytes that identify ``key`` without revealing it."""
    return hmac.new(key, b"splitfed sealing key id", hashlib.sha256).digest()[:8]


def is_sealed(blob: bytes) -> bool:
    return blob[: len(MAGIC)] == MAGIC


@dataclass(frozen=True)
class Sealer:
    """Seals and opens blobs under one key. The key never appears in messages or ``repr``."""

    key: bytes
    algorithm: Algorithm = "aes-256-gcm"

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise SealingError(f"a sealing key has {KEY_BYTES} bytes, not {len(self.key)}")
        if self.algorithm not in _ALGORITHMS:
            raise SealingError(f"unknown sealing algorithm {self.algorithm!r}; "
                               f"use one of {sorted(_ALGORITHMS)}")

    def __repr__(self) -> str:
        return f"Sealer(key_id={key_id(self.key).hex()}, algorithm={self.algorithm!r})"

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        code, cls = _ALGORITHMS[self.algorithm]
        nonce = os.urandom(NONCE_BYTES)
        header = _HEADER.pack(MAGIC, code, key_id(self.key), nonce, len(plaintext) + TAG_BYTES)
        return header + cls(self.key).encrypt(nonce, plaintext, header + context)

    def open(self, blob: bytes, context: bytes = b"", what: str = "sealed data") -> bytes:
        """The plaintext of ``blob``; ``SealingError`` naming the reason if it does not open."""
        if len(blob) < _HEADER.size:
            if is_sealed(blob) or not blob:
                raise SealingError(f"{what} is truncated ({len(blob)} bytes, shorter than its header)")
            raise SealingError(f"{what} is not sealed (no splitfed seal header); refusing to load it")
        magic, code, kid, nonce, length = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise SealingError(f"{what} is not sealed (no splitfed seal header); refusing to load it")
        if code not in _BY_CODE:
            raise SealingError(f"{what} uses an unknown sealing algorithm ({code})")
        body = blob[_HEADER.size:]
        if len(body) < length:
            raise SealingError(f"{what} is truncated: {len(body)} of {length} sealed bytes")
        if len(body) > length:
            raise SealingError(f"{what} has {len(body) - length} unexpected trailing bytes (tampered)")
        if not hmac.compare_digest(kid, key_id(self.key)):
            raise SealingError(f"{what} was sealed under another key (key id {kid.hex()}, this key "
                               f"{key_id(self.key).hex()}); check the key provider")
        cls = _BY_CODE[code][1]
        try:
            return cls(self.key).decrypt(nonce, body, blob[:_HEADER.size] + context)
        except InvalidTag:
            raise SealingError(f"{what} failed authentication: it was tampered with or belongs to "
                               "another slot") from None


def new_key() -> bytes:
    """A fresh random 32-byte sealing key."""
    return os.urandom(KEY_BYTES)
