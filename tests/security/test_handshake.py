"""The signed handshake: matching keys, and every refusal."""

from __future__ import annotations

import hmac
from dataclasses import replace

import pytest

from splitfed.security import (
    AllowList,
    AuthenticationError,
    ClientHandshake,
    HandshakeError,
    Identity,
    ReplayError,
    ServerHandshake,
    StaleHandshakeError,
    UnknownClientError,
)

from .conftest import NOW, Clock, run_handshake


def test_keys_match_and_differ_per_direction_and_session(alice, server, server_identity):
    client_keys, server_keys = run_handshake(alice, server, server_identity)
    assert client_keys.session_id == server_keys.session_id and len(client_keys.session_id) == 16
    assert hmac.compare_digest(client_keys.send_key, server_keys.recv_key)
    assert hmac.compare_digest(client_keys.recv_key, server_keys.send_key)
    assert client_keys.send_key != client_keys.recv_key
    assert len(client_keys.send_key) == len(client_keys.recv_key) == 32
    again, _ = run_handshake(alice, server, server_identity)
    assert again.session_id != client_keys.session_id
    assert {again.send_key, again.recv_key}.isdisjoint({client_keys.send_key, client_keys.recv_key})


def test_unknown_client_refused(server, server_identity):
    with pytest.raises(UnknownClientError):
        run_handshake(Identity.generate("mallory"), server, server_identity)


def test_revoked_client_refused(alice, server, server_identity, allowlist):
    run_handshake(alice, server, server_identity)
    allowlist.revoke("alice")
    with pytest.raises(UnknownClientError, match="revoked"):
        run_handshake(alice, server, server_identity)


def test_impostor_with_enrolled_name_refused(server, server_identity):
    with pytest.raises(AuthenticationError, match="bad handshake signature"):
        run_handshake(Identity.generate("alice"), server, server_identity)


def test_bad_client_signature_refused(alice, server, server_identity):
    hello = ClientHandshake(alice, server_identity.public, clock=Clock()).hello()
    for forged in (replace(hello, signature=bytes(64)),
                   replace(hello, client_nonce=bytes(32)),            # signed field changed
                   replace(hello, timestamp=hello.timestamp + 1),
                   replace(hello, client_name="bob")):                 # alice's hello relabelled as bob
        with pytest.raises(AuthenticationError):
            server.respond(forged)


def test_hello_for_another_server_refused(alice, allowlist, server_identity, clock):
    other_server = ServerHandshake(Identity.generate("server"), allowlist, clock=clock)
    hello = ClientHandshake(alice, server_identity.public, clock=clock).hello()
    with pytest.raises(AuthenticationError):
        other_server.respond(hello)


def test_server_impersonation_refused(alice, allowlist, server_identity, clock):
    impostor = ServerHandshake(Identity.generate("server"), allowlist, clock=clock)
    handshake = ClientHandshake(alice, server_identity.public, clock=clock)
    hello = handshake.hello()
    # The impostor cannot answer a hello pinned to the real server's key...
    with pytest.raises(AuthenticationError):
        impostor.respond(hello)
    # ...and an answer it signs with its own key (even with a correct shape) is refused by the client.
    real = ServerHandshake(server_identity, allowlist, clock=clock)
    genuine, _ = real.respond(hello)
    forged = replace(genuine, signature=impostor.identity.sign(b"anything"))
    with pytest.raises(AuthenticationError):
        handshake.finish(forged)


def test_server_hello_tampering_refused(alice, server, server_identity):
    changes = (("session_id", bytes(16)), ("server_nonce", bytes(32)), ("server_ephemeral", bytes(32)))
    for field, value in changes:
        handshake = ClientHandshake(alice, server_identity.public, clock=Clock())
        hello, _ = server.respond(handshake.hello())
        with pytest.raises(AuthenticationError):
            handshake.finish(replace(hello, **{field: value}))


def test_server_hello_of_another_client_hello_refused(alice, server, server_identity):
    first = ClientHandshake(alice, server_identity.public, clock=Clock())
    second = ClientHandshake(alice, server_identity.public, clock=Clock())
    answer_to_first, _ = server.respond(first.hello())
    second.hello()
    with pytest.raises(AuthenticationError):
        second.finish(answer_to_first)


@pytest.mark.parametrize("offset", [-61, 61, -10_000])
def test_stale_timestamp_refused(alice, server, server_identity, offset):
    with pytest.raises(StaleHandshakeError):
        run_handshake(alice, server, server_identity, clock=Clock(NOW + offset))


@pytest.mark.parametrize("offset", [-60, 0, 60])
def test_timestamp_within_skew_accepted(alice, server, server_identity, offset):
    run_handshake(alice, server, server_identity, clock=Clock(NOW + offset))


def test_replayed_client_hello_refused(alice, server, server_identity, clock):
    hello = ClientHandshake(alice, server_identity.public, clock=clock).hello()
    server.respond(hello)
    with pytest.raises(ReplayError):
        server.respond(hello)
    clock.now += 30
    with pytest.raises(ReplayError):
        server.respond(hello)
    clock.now += 31  # now out of the window: refused as stale, never accepted again
    with pytest.raises(StaleHandshakeError):
        server.respond(hello)


def test_replay_cache_is_bounded_and_fails_closed(alice, server_identity, allowlist, clock):
    server = ServerHandshake(server_identity, allowlist, clock=clock, replay_cache_size=3)
    hellos = []
    for second in range(5):
        hello = ClientHandshake(alice, server_identity.public, clock=Clock(NOW - 10 + second)).hello()
        server.respond(hello)
        hellos.append(hello)
    assert len(server._replay) == 3
    for hello in hellos:  # evicted ones are refused as stale, remembered ones as replays
        with pytest.raises((ReplayError, StaleHandshakeError)):
            server.respond(hello)
    clock.now += 200  # everything expired
    run_handshake(alice, server, server_identity, clock=clock)
    assert len(server._replay) == 1


def test_wrong_version_refused(alice, server, server_identity, clock):
    hello = ClientHandshake(alice, server_identity.public, clock=clock).hello()
    with pytest.raises(HandshakeError, match="version"):
        server.respond(replace(hello, version=2))


def test_client_handshake_is_single_use(alice, server, server_identity):
    handshake = ClientHandshake(alice, server_identity.public, clock=Clock())
    with pytest.raises(HandshakeError):
        handshake.finish(None)  # type: ignore[arg-type]
    hello, _ = server.respond(handshake.hello())
    assert handshake.hello() is handshake.hello()
    handshake.finish(hello)
    with pytest.raises(HandshakeError):
        handshake.finish(hello)


def test_server_refuses_non_hello(server):
    with pytest.raises(HandshakeError):
        server.respond(b"bytes")  # type: ignore[arg-type]


def test_low_order_ephemeral_refused(alice, server, server_identity, clock):
    handshake = ClientHandshake(alice, server_identity.public, clock=clock)
    hello = handshake.hello()
    # Re-sign a hello whose ephemeral key is the all-zero (low-order) point.
    from splitfed.security.handshake import client_transcript

    zero = replace(hello, client_ephemeral=bytes(32), client_nonce=bytes(range(32)))
    zero = replace(zero, signature=alice.sign(client_transcript(zero, server_identity.public)))
    with pytest.raises(HandshakeError):
        server.respond(zero)


def test_allowlist_instance_is_live(server_identity, clock):
    carol = Identity.generate("carol")
    allowlist = AllowList()
    server = ServerHandshake(server_identity, allowlist, clock=clock)
    with pytest.raises(UnknownClientError):
        run_handshake(carol, server, server_identity, clock=clock)
    allowlist.add(carol.public)
    run_handshake(carol, server, server_identity, clock=clock)
