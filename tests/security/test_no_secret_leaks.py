"""Reprs and exception messages never show key material, and key holders refuse to be serialized."""

from __future__ import annotations

import base64
import copy
from dataclasses import replace

import pytest

from splitfed.security import (
    AllowList,
    ClientHandshake,
    Identity,
    SecureChannel,
    SecurityError,
    ServerHandshake,
)

from .conftest import Clock, run_handshake


def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), repr(secret), base64.b64encode(secret).decode(),
            str(list(secret))]


def _private_seed(identity: Identity, tmp_path) -> bytes:
    key_path, _ = identity.save(tmp_path / identity.name)
    body = b"".join(key_path.read_bytes().splitlines()[1:-1])
    return base64.b64decode(body)[-32:]  # PKCS8 Ed25519: the 32-byte seed ends the DER


def test_session_keys_repr_hides_keys(alice, server, server_identity):
    client_keys, server_keys = run_handshake(alice, server, server_identity)
    for keys in (client_keys, server_keys):
        text = repr(keys) + str(keys)
        assert keys.session_id.hex() in text and "hidden" in text
        for secret in (keys.send_key, keys.recv_key):
            assert not any(form in text for form in _forms(secret))
        with pytest.raises(TypeError):
            keys.__reduce_ex__(4)
        with pytest.raises(TypeError):
            copy.copy(keys)


def test_errors_and_reprs_never_contain_secrets(tmp_path, server_identity):
    clock = Clock()
    alice = Identity.generate("alice")
    server = ServerHandshake(server_identity, AllowList([alice.public]), clock=clock)
    client_keys, server_keys = run_handshake(alice, server, server_identity)
    secrets = [client_keys.send_key, client_keys.recv_key, _private_seed(alice, tmp_path),
               _private_seed(server_identity, tmp_path)]
    client, receiver = SecureChannel(client_keys), SecureChannel(server_keys)
    sealed = client.seal("h1", 0, b"data")
    hello = ClientHandshake(alice, server_identity.public, clock=clock).hello()
    failures = [
        lambda: receiver.open(replace(sealed, ciphertext=bytes(len(sealed.ciphertext)))),
        lambda: receiver.open(replace(sealed, step=1)),
        lambda: receiver.open(replace(sealed, session_id=b"x" * 16)),
        lambda: (receiver.open(sealed), receiver.open(sealed)),
        lambda: server.respond(replace(hello, signature=bytes(64))),
        lambda: server.respond(replace(hello, client_name="mallory")),
        lambda: ServerHandshake(server_identity, AllowList([alice.public]), clock=Clock(0)).respond(hello),
        lambda: (server.respond(hello), server.respond(hello)),
        lambda: Identity.load(tmp_path / "missing.key"),
    ]
    messages = [repr(alice), repr(server_identity), repr(client_keys), repr(server_keys), repr(sealed)]
    for failure in failures:
        with pytest.raises(SecurityError) as info:
            failure()
        messages += [str(info.value), repr(info.value)]
    text = "\n".join(messages)
    for secret in secrets:
        assert not any(form in text for form in _forms(secret))
