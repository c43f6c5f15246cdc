"""Malformed handshake input raises `HandshakeError` (or a subclass) and nothing else."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitfed.security import (
    AllowList,
    ClientHandshake,
    ClientHello,
    HandshakeError,
    Identity,
    SecurityError,
    ServerHandshake,
    ServerHello,
)
from splitfed.security.encoding import pack

from .conftest import NOW, Clock

SERVER = Identity.generate("server")
ALICE = Identity.generate("alice")
CLIENT_HELLO = ClientHandshake(ALICE, SERVER.public, clock=Clock()).hello()
SERVER_HELLO = ServerHandshake(SERVER, AllowList([ALICE.public]), clock=Clock()).respond(CLIENT_HELLO)[0]
VALID = {ClientHello: CLIENT_HELLO.to_bytes(), ServerHello: SERVER_HELLO.to_bytes()}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MESSAGES = st.sampled_from([ClientHello, ServerHello])


def parse_or_handshake_error(cls: type, data: object) -> object:
    try:
        return cls.from_bytes(data)
    except HandshakeError:
        return None


@pytest.mark.parametrize("cls", [ClientHello, ServerHello])
def test_valid_round_trip(cls):
    assert cls.from_bytes(VALID[cls]).to_bytes() == VALID[cls]


@FUZZ
@given(cls=MESSAGES, data=st.binary(max_size=400))
def test_garbage(cls, data):
    parse_or_handshake_error(cls, data)


@FUZZ
@given(cls=MESSAGES, cut=st.integers(min_value=0))
def test_truncated(cls, cut):
    valid = VALID[cls]
    with pytest.raises(HandshakeError):
        cls.from_bytes(valid[: cut % len(valid)])


@FUZZ
@given(cls=MESSAGES, data=st.data())
def test_mutated(cls, data):
    valid = bytearray(VALID[cls])
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        position = data.draw(st.integers(0, len(valid) - 1))
        if action == "flip":
            valid[position] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            valid[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif len(valid) > 1:
            del valid[position]
    parse_or_handshake_error(cls, bytes(valid))


FIELD = st.one_of(st.binary(max_size=80), st.text(max_size=10).map(str.encode), st.just(b"\xff" * 70),
                  st.integers(0, 2**70).map(lambda n: n.to_bytes(9, "big")))


@FUZZ
@given(cls=MESSAGES, fields=st.lists(FIELD, max_size=9), right_tag=st.booleans())
def test_wrong_field_sizes_and_counts(cls, fields, right_tag):
    tag = b"splitfed ClientHello" if cls is ClientHello else b"splitfed ServerHello"
    parse_or_handshake_error(cls, pack(tag if right_tag else b"other", *fields))


WRONG = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                  st.text(max_size=40), st.binary(max_size=70), st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@FUZZ
@given(cls=MESSAGES, data=WRONG)
def test_wrong_input_types(cls, data):
    parse_or_handshake_error(cls, data)


@FUZZ
@given(data=st.data())
def test_wrong_field_types_in_dataclasses(data):
    cls = data.draw(MESSAGES)
    base = CLIENT_HELLO if cls is ClientHello else SERVER_HELLO
    field = data.draw(st.sampled_from(list(base.__dataclass_fields__)))
    value = data.draw(WRONG)
    try:
        message = replace(base, **{field: value})
    except HandshakeError:
        return
    assert message.to_bytes() == cls.from_bytes(message.to_bytes()).to_bytes()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_server_refuses_mutated_hellos_with_security_errors_only(data):
    """Mutated hellos that still parse are refused by the server with a `SecurityError`, never a crash."""
    server = ServerHandshake(SERVER, AllowList([ALICE.public]), clock=Clock(NOW))
    valid = bytearray(VALID[ClientHello])
    position = data.draw(st.integers(0, len(valid) - 1))
    valid[position] ^= data.draw(st.integers(1, 255))
    hello = parse_or_handshake_error(ClientHello, bytes(valid))
    if hello is not None:
        with pytest.raises(SecurityError):
            server.respond(hello)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_client_refuses_mutated_server_hellos(data):
    handshake = ClientHandshake(ALICE, SERVER.public, clock=Clock())
    answer, _ = ServerHandshake(SERVER, AllowList([ALICE.public]), clock=Clock()).respond(handshake.hello())
    valid = bytearray(answer.to_bytes())
    position = data.draw(st.integers(0, len(valid) - 1))
    valid[position] ^= data.draw(st.integers(1, 255))
    hello = parse_or_handshake_error(ServerHello, bytes(valid))
    if hello is not None:
        with pytest.raises(SecurityError):
            handshake.finish(hello)
