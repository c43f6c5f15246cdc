"""Per-session keys and their derivation from the handshake."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SESSION_KEY_SIZE = 32
KEYS_LABEL = b"splitfed-v1 session-keys"


@dataclass(frozen=True, eq=False, repr=False)
class SessionKeys:
    """One side's view of a session: it seals with `send_key` and opens with `recv_key`."""

    session_id: bytes
    send_key: bytes
    recv_key: bytes

    def __post_init__(self) -> None:
        for field in ("send_key", "recv_key"):
            value = getattr(self, field)
            if not isinstance(value, bytes) or len(value) != SESSION_KEY_SIZE:
                raise ValueError(f"{field} must be {SESSION_KEY_SIZE} bytes")
        if not isinstance(self.session_id, bytes) or not self.session_id:
            raise ValueError("session_id must be non-empty bytes")

    def __repr__(self) -> str:
        return f"SessionKeys(session_id={self.session_id.hex()}, keys=<hidden>)"

    def __reduce__(self) -> object:
        raise TypeError("SessionKeys hold secret keys and cannot be serialized or copied")


def derive_keys(shared_secret: bytes, client_nonce: bytes, server_nonce: bytes, session_id: bytes,
                transcript: bytes) -> tuple[bytes, bytes]:
    """HKDF-SHA256 of the X25519 secret -> (client->server key, server->client key).

    salt = client_nonce || server_nonce; info = label || session_id || SHA-256(transcript).
    """
    info = KEYS_LABEL + session_id + hashlib.sha256(transcript).digest()
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * SESSION_KEY_SIZE, salt=client_nonce + server_nonce,
               info=info).derive(shared_secret)
    return okm[:SESSION_KEY_SIZE], okm[SESSION_KEY_SIZE:]
