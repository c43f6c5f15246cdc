"""A signed, fresh handshake that authenticates both sides and derives per-direction session keys.

Both sides have Ed25519 identities: the server knows clients from its `AllowList`, the client pins the
server's public key. Messages (`hello.py`) are plain dataclasses with a strict byte encoding, so any
transport can carry them.

1. Client -> server, `ClientHello(version, client_name, client_ephemeral, client_nonce, timestamp,
   signature)`: a fresh X25519 key, 32 random bytes and the unix time, signed by the client over

       T_c = pack("splitfed-v1 client-hello", version, client_name, client_ephemeral, client_nonce,
                  timestamp, server_public_key)

   (`encoding.pack`: every field length-prefixed, so the encoding is unambiguous; the server's key binds
   the hello to the server it was meant for).
2. The server checks the version, that the client is enrolled and not revoked (`UnknownClientError`),
   the signature (`AuthenticationError`), that the timestamp is within `max_skew_s` of its clock
   (`StaleHandshakeError`) and that the nonce was not seen within that window (`ReplayError`; the
   cache is bounded, see `ReplayCache`). Only then it answers `ServerHello(version, session_id,
   server_ephemeral, server_nonce, signature)` with a random 16-byte session id, signed over

       T_s = pack("splitfed-v1 server-hello", T_c, client_signature, client_public_key, version,
                  session_id, server_ephemeral, server_nonce)

   so the client knows the real server answered this very hello (the client's nonce makes it fresh).
3. Both sides compute the X25519 secret of the two ephemeral keys and
   HKDF-SHA256(secret, salt = client_nonce || server_nonce,
               info = "splitfed-v1 session-keys" || session_id || SHA-256(pack(T_s, server_signature)))
   -> 64 bytes = client->server key || server->client key, for `SecureChannel` (AES-256-GCM).

Ephemeral keys give forward secrecy: stolen identity keys do not open recorded sessions.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from splitfed.security.allowlist import AllowList
from splitfed.security.encoding import encode_uint, pack
from splitfed.security.errors import AuthenticationError, HandshakeError, StaleHandshakeError
from splitfed.security.hello import NONCE_SIZE, SESSION_ID_SIZE, ClientHello, ServerHello
from splitfed.security.identity import SIGNATURE_SIZE, Identity, PublicIdentity
from splitfed.security.replay import ReplayCache
from splitfed.security.session import SessionKeys, derive_keys

VERSION = 1
CLIENT_LABEL = b"splitfed-v1 client-hello"
SERVER_LABEL = b"splitfed-v1 server-hello"


def client_transcript(hello: ClientHello, server_key: PublicIdentity) -> bytes:
    """T_c: what the client signs."""
    return pack(CLIENT_LABEL, encode_uint(hello.version, 2), hello.client_name.encode("ascii"),
                hello.client_ephemeral, hello.client_nonce, encode_uint(hello.timestamp, 8), server_key.raw)


def server_transcript(client_hello: ClientHello, client_key: PublicIdentity, server_key: PublicIdentity,
                      hello: ServerHello) -> bytes:
    """T_s: what the server signs."""
    return pack(SERVER_LABEL, client_transcript(client_hello, server_key), client_hello.signature,
                client_key.raw, encode_uint(hello.version, 2), hello.session_id, hello.server_ephemeral,
                hello.server_nonce)


def _ephemeral() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _shared_secret(private: X25519PrivateKey, peer_raw: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_raw))
    except ValueError:  # a low-order point gives an all-zero secret, which cryptography refuses
        raise HandshakeError("invalid ephemeral public key") from None


def _keys(secret: bytes, client_hello: ClientHello, signed: bytes, hello: ServerHello) -> tuple[bytes, bytes]:
    transcript = pack(signed, hello.signature)
    return derive_keys(secret, client_hello.client_nonce, hello.server_nonce, hello.session_id, transcript)


class ClientHandshake:
    """The client's side of one handshake: `hello()`, send it, then `finish(server_hello)`. Single use."""

    def __init__(self, identity: Identity, server_key: PublicIdentity,
                 clock: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self.server_key = server_key
        self._clock = clock
        self._ephemeral: X25519PrivateKey | None = None
        self._hello: ClientHello | None = None

    def hello(self) -> ClientHello:
        """The signed ClientHello to send (generated once)."""
        if self._hello is not None:
            return self._hello
        self._ephemeral, ephemeral_raw = _ephemeral()
        unsigned = ClientHello(VERSION, self.identity.name, ephemeral_raw, os.urandom(NONCE_SIZE),
                               int(self._clock()), bytes(SIGNATURE_SIZE))
        signature = self.identity.sign(client_transcript(unsigned, self.server_key))
        self._hello = replace(unsigned, signature=signature)
        return self._hello

    def finish(self, server_hello: ServerHello) -> SessionKeys:
        """Verify the server's answer and derive the keys; `AuthenticationError` if not the pinned server."""
        if self._hello is None or self._ephemeral is None:
            raise HandshakeError("call hello() first; a ClientHandshake is used once")
        if not isinstance(server_hello, ServerHello):
            raise HandshakeError("expected a ServerHello")
        if server_hello.version != VERSION:
            raise HandshakeError(f"unsupported handshake version {server_hello.version}")
        signed = server_transcript(self._hello, self.identity.public, self.server_key, server_hello)
        self.server_key.verify(server_hello.signature, signed)
        secret = _shared_secret(self._ephemeral, server_hello.server_ephemeral)
        self._ephemeral = None
        to_server, to_client = _keys(secret, self._hello, signed, server_hello)
        return SessionKeys(server_hello.session_id, send_key=to_server, recv_key=to_client)


class ServerHandshake:
    """The server's side: answers each valid ClientHello with a ServerHello and the session's keys."""

    def __init__(self, identity: Identity, allowlist: AllowList, max_skew_s: int = 60,
                 clock: Callable[[], float] = time.time, replay_cache_size: int = 100_000) -> None:
        self.identity = identity
        self.allowlist = allowlist
        self.max_skew_s = max_skew_s
        self._clock = clock
        self._replay = ReplayCache(max_skew_s, replay_cache_size)

    def respond(self, client_hello: ClientHello) -> tuple[ServerHello, SessionKeys]:
        """Check `client_hello` (see the module docstring) and answer it; raises a `SecurityError`."""
        if not isinstance(client_hello, ClientHello):
            raise HandshakeError("expected a ClientHello")
        if client_hello.version != VERSION:
            raise HandshakeError(f"unsupported handshake version {client_hello.version}")
        client_key = self.allowlist.get(client_hello.client_name)
        try:
            client_key.verify(client_hello.signature, client_transcript(client_hello, self.identity.public))
        except AuthenticationError:
            raise AuthenticationError(f"bad handshake signature from {client_hello.client_name!r}") from None
        now = int(self._clock())
        if abs(now - client_hello.timestamp) > self.max_skew_s:
            raise StaleHandshakeError(f"handshake timestamp is {now - client_hello.timestamp} s off the "
                                      f"server clock (allowed: {self.max_skew_s} s)")
        self._replay.check_and_add(client_hello.client_nonce, client_hello.timestamp, now)
        ephemeral, ephemeral_raw = _ephemeral()
        secret = _shared_secret(ephemeral, client_hello.client_ephemeral)
        unsigned = ServerHello(VERSION, secrets.token_bytes(SESSION_ID_SIZE), ephemeral_raw,
                               os.urandom(NONCE_SIZE), bytes(SIGNATURE_SIZE))
        signed = server_transcript(client_hello, client_key, self.identity.public, unsigned)
        hello = replace(unsigned, signature=self.identity.sign(signed))
        to_server, to_client = _keys(secret, client_hello, signed, hello)
        return hello, SessionKeys(hello.session_id, send_key=to_client, recv_key=to_server)
