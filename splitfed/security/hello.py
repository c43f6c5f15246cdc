"""The two handshake messages and their strict wire format.

Wire format: `encoding.pack` of a message tag, then the fields in order; integers are fixed-size big-endian
(version: 2 bytes, timestamp: 8 bytes). Parsing accepts nothing else: any malformed input, and any field
of the wrong type or size when a message is built directly, raises `HandshakeError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitfed.security.encoding import decode_uint, encode_uint, pack, unpack
from splitfed.security.errors import HandshakeError
from splitfed.security.identity import SIGNATURE_SIZE, check_name

KEY_SIZE = 32
NONCE_SIZE = 32
SESSION_ID_SIZE = 16
MAX_HELLO_BYTES = 1024
CLIENT_TAG = b"splitfed ClientHello"
SERVER_TAG = b"splitfed ServerHello"


def _check_bytes(value: object, size: int, field: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise HandshakeError(f"{field} must be {size} bytes")


def _check_uint(value: object, bits: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise HandshakeError(f"{field} must be an integer in [0, 2**{bits})")


def _fields(data: object, tag: bytes, count: int) -> list[bytes]:
    try:
        fields = unpack(data, count, MAX_HELLO_BYTES)  # type: ignore[arg-type]
    except ValueError as error:
        raise HandshakeError(f"malformed {tag.decode()}: {error}") from None
    if fields[0] != tag:
        raise HandshakeError(f"not a {tag.decode()}")
    return fields[1:]


@dataclass(frozen=True)
class ClientHello:
    """The client's signed offer: its name, an X25519 ephemeral key, a nonce and the time."""

    version: int
    client_name: str
    client_ephemeral: bytes
    client_nonce: bytes
    timestamp: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_uint(self.version, 16, "version")
        try:
            check_name(self.client_name)
        except ValueError:
            raise HandshakeError("client_name is not a valid identity name") from None
        _check_bytes(self.client_ephemeral, KEY_SIZE, "client_ephemeral")
        _check_bytes(self.client_nonce, NONCE_SIZE, "client_nonce")
        _check_uint(self.timestamp, 64, "timestamp")
        _check_bytes(self.signature, SIGNATURE_SIZE, "signature")

    def to_bytes(self) -> bytes:
        return pack(CLIENT_TAG, encode_uint(self.version, 2), self.client_name.encode("ascii"),
                    self.client_ephemeral, self.client_nonce, encode_uint(self.timestamp, 8), self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientHello:
        version, name, ephemeral, nonce, timestamp, signature = _fields(data, CLIENT_TAG, 7)
        try:
            return cls(decode_uint(version, 2), name.decode("ascii"), ephemeral, nonce,
                       decode_uint(timestamp, 8), signature)
        except (ValueError, UnicodeDecodeError):
            raise HandshakeError("malformed ClientHello field") from None


@dataclass(frozen=True)
class ServerHello:
    """The server's signed answer: a session id, its X25519 ephemeral key and a nonce."""

    version: int
    session_id: bytes
    server_ephemeral: bytes
    server_nonce: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_uint(self.version, 16, "version")
        _check_bytes(self.session_id, SESSION_ID_SIZE, "session_id")
        _check_bytes(self.server_ephemeral, KEY_SIZE, "server_ephemeral")
        _check_bytes(self.server_nonce, NONCE_SIZE, "server_nonce")
        _check_bytes(self.signature, SIGNATURE_SIZE, "signature")

    def to_bytes(self) -> bytes:
        return pack(SERVER_TAG, encode_uint(self.version, 2), self.session_id, self.server_ephemeral,
                    self.server_nonce, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerHello:
        version, session_id, ephemeral, nonce, signature = _fields(data, SERVER_TAG, 6)
        try:
            return cls(decode_uint(version, 2), session_id, ephemeral, nonce, signature)
        except ValueError:
            raise HandshakeError("malformed ServerHello field") from None
