"""End-to-end sealed messages of one session: AES-256-GCM, one key per direction, counter nonces.

The nonce is the 96-bit big-endian send counter (1, 2, 3, ...; never reused), and the associated data
binds the session id, the message kind, the training step and the counter. The receiver accepts only
counters above the last one it accepted, so replayed, reordered and cross-session messages fail, and a
message that fails to open leaves the channel's state unchanged.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from splitfed.security.encoding import encode_uint, pack
from splitfed.security.errors import DecryptionError, ReplayError, SecurityError
from splitfed.security.session import SessionKeys

AD_LABEL = b"splitfed-v1 sealed"
MAX_COUNTER = 2**64 - 1
MAX_KIND_BYTES = 255
TAG_SIZE = 16


@dataclass(frozen=True)
class Sealed:
    """An encrypted message with the cleartext fields its associated data binds."""

    session_id: bytes
    kind: str
    step: int
    counter: int
    ciphertext: bytes


def associated_data(session_id: bytes, kind: str, step: int, counter: int) -> bytes:
    """The canonical AEAD associated data of a message."""
    encoded = kind.encode("utf-8")
    if not 0 < len(encoded) <= MAX_KIND_BYTES:
        raise ValueError(f"kind must be 1-{MAX_KIND_BYTES} bytes of UTF-8")
    return pack(AD_LABEL, session_id, encoded, encode_uint(step, 8), encode_uint(counter, 8))


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


class SecureChannel:
    """Seals outgoing and opens incoming messages of one session; safe to share between threads."""

    def __init__(self, keys: SessionKeys) -> None:
        if not isinstance(keys, SessionKeys):
            raise TypeError("keys must be SessionKeys")
        self._session_id = keys.session_id
        self._send = AESGCM(keys.send_key)
        self._recv = AESGCM(keys.recv_key)
        self._sent = 0
        self._received = 0
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()

    @property
    def session_id(self) -> bytes:
        return self._session_id

    @property
    def last_received(self) -> int:
        """Counter of the last message accepted (0 before any)."""
        return self._received

    def seal(self, kind: str, step: int, plaintext: bytes) -> Sealed:
        """Encrypt `plaintext` as message `kind` of training step `step` under the next counter."""
        if not isinstance(kind, str):
            raise TypeError("kind must be a str")
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise TypeError("plaintext must be bytes")
        with self._send_lock:
            if self._sent >= MAX_COUNTER:
                raise SecurityError("send counter exhausted; start a new session")
            counter = self._sent + 1
            aad = associated_data(self._session_id, kind, step, counter)
            ciphertext = self._send.encrypt(_nonce(counter), bytes(plaintext), aad)
            self._sent = counter
        return Sealed(self._session_id, kind, step, counter, ciphertext)

    def open(self, sealed: Sealed) -> bytes:
        """Decrypt `sealed`: `DecryptionError` if it is not this session's or fails authentication,
        `ReplayError` if its counter is not above the last accepted one."""
        if not isinstance(sealed, Sealed):
            raise DecryptionError("expected a Sealed message")
        if not isinstance(sealed.session_id, bytes) or not hmac.compare_digest(sealed.session_id,
                                                                                self._session_id):
            raise DecryptionError("message belongs to another session")
        counter = sealed.counter
        if isinstance(counter, bool) or not isinstance(counter, int) or not 0 < counter <= MAX_COUNTER:
            raise DecryptionError("invalid message counter")
        if not isinstance(sealed.ciphertext, bytes) or len(sealed.ciphertext) < TAG_SIZE:
            raise DecryptionError("ciphertext too short")
        try:
            aad = associated_data(self._session_id, sealed.kind, sealed.step, counter)
        except (AttributeError, ValueError):
            raise DecryptionError("invalid message kind or step") from None
        with self._recv_lock:
            if counter <= self._received:
                raise ReplayError(f"message counter {counter} not above {self._received} "
                                  "(replayed or reordered)")
            try:
                plaintext = self._recv.decrypt(_nonce(counter), sealed.ciphertext, aad)
            except InvalidTag:
                raise DecryptionError("message failed authentication") from None
            self._received = counter
        return plaintext
