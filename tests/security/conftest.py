"""Identities, an allow-list, a settable clock and a helper that runs a whole handshake."""

from __future__ import annotations

import pytest

from splitfed.security import AllowList, ClientHandshake, Identity, ServerHandshake, SessionKeys

NOW = 1_750_000_000


class Clock:
    """A clock tests can move."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def server_identity() -> Identity:
    return Identity.generate("server")


@pytest.fixture(scope="session")
def alice() -> Identity:
    return Identity.generate("alice")


@pytest.fixture(scope="session")
def bob() -> Identity:
    return Identity.generate("bob")


@pytest.fixture
def allowlist(alice: Identity, bob: Identity) -> AllowList:
    return AllowList([alice.public, bob.public])


@pytest.fixture
def server(server_identity: Identity, allowlist: AllowList, clock: Clock) -> ServerHandshake:
    return ServerHandshake(server_identity, allowlist, max_skew_s=60, clock=clock)


def run_handshake(client: Identity, server: ServerHandshake, server_identity: Identity,
                  clock: Clock | None = None) -> tuple[SessionKeys, SessionKeys]:
    """Run a full handshake through the byte encoding; returns (client keys, server keys)."""
    from splitfed.security import ClientHello, ServerHello

    handshake = ClientHandshake(client, server_identity.public, clock=clock or Clock())
    hello, server_keys = server.respond(ClientHello.from_bytes(handshake.hello().to_bytes()))
    return handshake.finish(ServerHello.from_bytes(hello.to_bytes())), server_keys
