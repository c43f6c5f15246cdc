"""Sealed messages: round trip and every refusal (tampering, replay, reordering, cross-session)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfed.security import (
    AllowList,
    DecryptionError,
    ReplayError,
    SecureChannel,
    SecurityError,
    ServerHandshake,
    SessionKeys,
)
from splitfed.transport.envelope import from_wire, to_wire

from .conftest import Clock, run_handshake


@pytest.fixture
def session(alice, server, server_identity) -> tuple[SecureChannel, SecureChannel]:
    client_keys, server_keys = run_handshake(alice, server, server_identity)
    return SecureChannel(client_keys), SecureChannel(server_keys)


def test_round_trip_both_directions(session):
    client, server = session
    for step in range(3):
        sealed = client.seal("h1", step, b"hidden state %d" % step)
        assert sealed.counter == step + 1 and sealed.session_id == client.session_id
        assert b"hidden state" not in sealed.ciphertext
        assert server.open(from_wire(to_wire(sealed))) == b"hidden state %d" % step  # across the wire
        assert client.open(server.seal("dh1", step, b"gradient")) == b"gradient"
    assert server.open(client.seal("empty", 9, b"")) == b""


def test_same_plaintext_different_ciphertexts(session):
    client, _ = session
    assert client.seal("h1", 0, b"x" * 32).ciphertext != client.seal("h1", 0, b"x" * 32).ciphertext


def test_reflection_refused(session):
    client, _ = session
    with pytest.raises(DecryptionError):
        client.open(client.seal("h1", 0, b"sent by me"))


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_any_flipped_ciphertext_byte_refused(alice, server_identity, position, flip):
    handshake = ServerHandshake(server_identity, AllowList([alice.public]), clock=Clock())
    client_keys, server_keys = run_handshake(alice, handshake, server_identity)
    sealed = SecureChannel(client_keys).seal("h1", 5, b"secret activations")
    tampered = bytearray(sealed.ciphertext)
    tampered[position % len(tampered)] ^= flip
    receiver = SecureChannel(server_keys)
    with pytest.raises(DecryptionError):
        receiver.open(replace(sealed, ciphertext=bytes(tampered)))
    assert receiver.open(sealed) == b"secret activations"


def test_truncated_ciphertext_refused(session):
    client, server = session
    sealed = client.seal("h1", 0, b"data")
    for cut in (0, 1, 15, len(sealed.ciphertext) - 1):
        with pytest.raises(DecryptionError):
            server.open(replace(sealed, ciphertext=sealed.ciphertext[:cut]))
    assert server.open(sealed) == b"data"


def test_replayed_message_refused(session):
    client, server = session
    sealed = client.seal("h1", 0, b"data")
    assert server.open(sealed) == b"data"
    with pytest.raises(ReplayError):
        server.open(sealed)


def test_reordered_message_refused(session):
    client, server = session
    first, second = client.seal("h1", 0, b"one"), client.seal("h1", 1, b"two")
    assert server.open(second) == b"two"
    with pytest.raises(ReplayError):
        server.open(first)


def test_counter_rewrite_refused(session):
    client, server = session
    first = client.seal("h1", 0, b"one")
    server.open(first)
    with pytest.raises(DecryptionError):  # a higher counter on a replayed ciphertext fails authentication
        server.open(replace(first, counter=7))
    for counter in (0, -1, 2**64, True, "2"):
        with pytest.raises(SecurityError):
            server.open(replace(first, counter=counter))


def test_other_session_refused(alice, server, server_identity):
    a_client, a_server = map(SecureChannel, run_handshake(alice, server, server_identity))
    b_client, b_server = map(SecureChannel, run_handshake(alice, server, server_identity))
    sealed = a_client.seal("h1", 0, b"session A")
    with pytest.raises(DecryptionError, match="another session"):
        b_server.open(sealed)
    with pytest.raises(DecryptionError):  # relabelled with B's session id: wrong key and AD
        b_server.open(replace(sealed, session_id=b_server.session_id))
    assert a_server.open(sealed) == b"session A"


def test_second_client_cannot_open_first_clients_messages(alice, bob, server, server_identity):
    """Bob is enrolled and completes his own handshake, yet Alice's captured traffic stays closed to him."""
    alice_client, alice_server = map(SecureChannel, run_handshake(alice, server, server_identity))
    bob_client, _ = map(SecureChannel, run_handshake(bob, server, server_identity))
    up = alice_client.seal("h1", 0, b"alice's hidden state")
    down = alice_server.seal("dh1", 0, b"alice's gradient")
    for captured in (up, down, replace(up, session_id=bob_client.session_id),
                     replace(down, session_id=bob_client.session_id)):
        with pytest.raises(DecryptionError):
            bob_client.open(captured)
    assert alice_server.open(up) == b"alice's hidden state"
    assert alice_client.open(down) == b"alice's gradient"


@pytest.mark.parametrize("change", [{"kind": "h2"}, {"kind": "h1 "}, {"step": 4}, {"step": 2**64 - 1},
                                    {"kind": ""}, {"kind": 3}, {"step": -1}, {"step": None}])
def test_wrong_kind_or_step_refused(session, change):
    client, server = session
    sealed = client.seal("h1", 3, b"data")
    with pytest.raises(DecryptionError):
        server.open(replace(sealed, **change))
    assert server.open(sealed) == b"data"


def test_failed_open_does_not_advance_counter(session):
    client, server = session
    sealed = client.seal("h1", 0, b"one")
    forged = replace(sealed, counter=2**40, ciphertext=bytes(len(sealed.ciphertext)))
    with pytest.raises(DecryptionError):
        server.open(forged)
    assert server.last_received == 0
    assert server.open(sealed) == b"one"
    assert server.last_received == 1


def test_gaps_are_allowed_but_never_backwards(session):
    client, server = session
    sealed = [client.seal("h1", i, bytes([i])) for i in range(4)]
    assert server.open(sealed[0]) == b"\x00"
    assert server.open(sealed[2]) == b"\x02"
    with pytest.raises(ReplayError):
        server.open(sealed[1])
    assert server.open(sealed[3]) == b"\x03"


def test_counter_exhaustion(session):
    client, server = session
    client._sent = 2**64 - 2
    last = client.seal("h1", 0, b"last")
    assert last.counter == 2**64 - 1
    assert server.open(last) == b"last"
    with pytest.raises(SecurityError, match="exhausted"):
        client.seal("h1", 0, b"one too many")


def test_malformed_sealed_messages(session):
    client, server = session
    good = client.seal("h1", 0, b"data")
    bad_fields = [{"ciphertext": b""}, {"ciphertext": good.ciphertext[:-1]},
                  {"ciphertext": good.ciphertext + b"\x00"}, {"ciphertext": "text"}, {"counter": 0},
                  {"counter": True}, {"kind": ""}, {"kind": "x" * 300}, {"session_id": "text"}]
    for fields in bad_fields:
        with pytest.raises(DecryptionError):
            server.open(replace(good, **fields))
    with pytest.raises(DecryptionError):
        server.open("not sealed")  # type: ignore[arg-type]
    assert server.open(good) == b"data"  # the genuine message is still accepted after the refusals


def test_seal_argument_checks(session):
    client, _ = session
    for kind, step, plaintext in (("", 0, b""), ("h1", -1, b""), ("h1", 2**64, b""), ("k" * 256, 0, b"")):
        with pytest.raises(ValueError):
            client.seal(kind, step, plaintext)
    for kind, step, plaintext in ((1, 0, b""), ("h1", 0, 5), ("h1", 0, "text")):
        with pytest.raises(TypeError):
            client.seal(kind, step, plaintext)  # type: ignore[arg-type]
    assert client.seal("h1", 0, b"ok").counter == 1  # failed seals used no counter


def test_session_keys_validation():
    with pytest.raises(ValueError):
        SessionKeys(b"\x01" * 16, b"short", b"\x00" * 32)
    with pytest.raises(TypeError):
        SecureChannel("keys")  # type: ignore[arg-type]
