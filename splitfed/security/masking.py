"""The cryptography under secure aggregation (the protocol is ``splitfed.aggregation``): round key pairs,
X25519 agreement, HKDF-derived mask keys, the ChaCha20 mask stream, and AES-256-GCM sealed shares.

Kept here so that only ``splitfed.security`` imports ``cryptography``; the protocol's state machines
call these functions and never touch a key object.
"""

from __future__ import annotations

import hmac
import os

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from splitfed.security.encoding import pack
from splitfed.security.errors import SecAggError

KEY_SIZE = 32
ADVERTISEMENT_SIZE = 2 * KEY_SIZE
AEAD_NONCE_SIZE = 12
AEAD_TAG_SIZE = 16
CHUNK_ELEMENTS = 1 << 20

SHARE_KEY_LABEL = b"splitfed-v1 secagg share-key"
PAIR_MASK_LABEL = b"splitfed-v1 secagg pair-mask"
SELF_MASK_LABEL = b"splitfed-v1 secagg self-mask"


def split_advertisement(public: bytes) -> tuple[bytes, bytes]:
    """(c_pk, s_pk) of a 64-byte advertisement."""
    if not isinstance(public, bytes) or len(public) != ADVERTISEMENT_SIZE:
        raise SecAggError(f"an advertisement is {ADVERTISEMENT_SIZE} bytes (two X25519 public keys)")
    return public[:KEY_SIZE], public[KEY_SIZE:]


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _exchange(private: X25519PrivateKey, peer_raw: bytes, peer: str) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_raw))
    except ValueError:  # a low-order point gives an all-zero secret, which cryptography refuses
        raise SecAggError(f"invalid public key of client {peer!r}") from None


def _hkdf(secret: bytes, *info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=pack(*info)).derive(secret)


class MaskingKeys:
    """A client's two X25519 key pairs for one round: c (encrypts shares) and s (pairwise masks)."""

    __slots__ = ("_cipher", "_mask")

    def __init__(self, cipher: X25519PrivateKey, mask: X25519PrivateKey) -> None:
        if not isinstance(cipher, X25519PrivateKey) or not isinstance(mask, X25519PrivateKey):
            raise TypeError("MaskingKeys expects two X25519PrivateKey")
        self._cipher = cipher
        self._mask = mask

    @classmethod
    def generate(cls) -> MaskingKeys:
        """Fresh random keys."""
        return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        """`c_pk || s_pk`, 64 bytes: what the client advertises."""
        return _raw_public(self._cipher) + _raw_public(self._mask)

    def cipher_secret(self, peer_public: bytes, peer: str) -> bytes:
        return _exchange(self._cipher, split_advertisement(peer_public)[0], peer)

    def mask_secret(self, peer_public: bytes, peer: str) -> bytes:
        return _exchange(self._mask, split_advertisement(peer_public)[1], peer)

    def mask_private_bytes(self) -> bytes:
        return self._mask.private_bytes_raw()

    def __repr__(self) -> str:
        return "MaskingKeys(<hidden>)"

    def __reduce__(self) -> object:
        raise TypeError("MaskingKeys hold private keys and cannot be serialized or copied")


class RecoveredMaskKey:
    """A dropped client's s key rebuilt from its Shamir shares, checked against what it advertised."""

    __slots__ = ("_private",)

    def __init__(self, private_bytes: bytes, advertised: bytes, owner: str) -> None:
        try:
            self._private = X25519PrivateKey.from_private_bytes(private_bytes)
        except ValueError:
            raise SecAggError(f"could not rebuild the key of dropped client {owner!r}") from None
        if not hmac.compare_digest(_raw_public(self._private), split_advertisement(advertised)[1]):
            raise SecAggError(f"rebuilt key of dropped client {owner!r} does not match its advertised key")

    def mask_secret(self, peer_public: bytes, peer: str) -> bytes:
        """The pairwise secret the dropped client shared with ``peer``."""
        return _exchange(self._private, split_advertisement(peer_public)[1], peer)

    def __repr__(self) -> str:
        return "RecoveredMaskKey(<hidden>)"

    def __reduce__(self) -> object:
        raise TypeError("a recovered key cannot be serialized or copied")


def add_stream(flat: torch.Tensor, key: bytes, sign: int) -> None:
    """flat += sign * (ChaCha20 keystream of `key` as int64 words), in place, chunk by chunk."""
    total = flat.numel()
    if total == 0:
        return
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    chunk = min(CHUNK_ELEMENTS, total)
    zeros = memoryview(bytes(8 * chunk))
    buffer = bytearray(8 * chunk)
    words = torch.frombuffer(buffer, dtype=torch.int64)
    for start in range(0, total, chunk):
        count = min(chunk, total - start)
        encryptor.update_into(zeros[:8 * count], buffer)
        target = flat[start:start + count]
        if sign > 0:
            target.add_(words[:count])
        else:
            target.sub_(words[:count])


def pair_key(secret: bytes, round_id: bytes, a: str, b: str, name: str) -> bytes:
    """The mask key of pair (a, b) for tensor ``name`` in this round (the same for both sides)."""
    low, high = sorted((a, b))
    return _hkdf(secret, PAIR_MASK_LABEL, round_id, low.encode(), high.encode(), name.encode("utf-8"))


def self_key(seed: bytes, round_id: bytes, client_id: str, name: str) -> bytes:
    """The self-mask key of ``client_id`` for tensor ``name`` in this round."""
    return _hkdf(seed, SELF_MASK_LABEL, round_id, client_id.encode(), name.encode("utf-8"))


def _share_aead(secret: bytes, round_id: bytes, a: str, b: str) -> AESGCM:
    low, high = sorted((a, b))
    return AESGCM(_hkdf(secret, SHARE_KEY_LABEL, round_id, low.encode(), high.encode()))


def seal_share(secret: bytes, round_id: bytes, sender: str, recipient: str, plaintext: bytes,
               associated: bytes) -> bytes:
    """``nonce || AES-256-GCM(plaintext)`` under the key the pair derives from its c secret."""
    nonce = os.urandom(AEAD_NONCE_SIZE)
    return nonce + _share_aead(secret, round_id, sender, recipient).encrypt(nonce, plaintext, associated)


def open_share(secret: bytes, round_id: bytes, sender: str, recipient: str, blob: bytes,
               associated: bytes) -> bytes | None:
    """The plaintext of a sealed share, or None when it fails authentication."""
    if len(blob) < AEAD_NONCE_SIZE + AEAD_TAG_SIZE:
        return None
    try:
        return _share_aead(secret, round_id, sender, recipient).decrypt(
            blob[:AEAD_NONCE_SIZE], blob[AEAD_NONCE_SIZE:], associated)
    except InvalidTag:
        return None
