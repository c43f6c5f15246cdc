"""The client's connection to the trunk server, kept alive: connect, and reconnect with backoff.

When the server is unreachable or shutting down (gRPC ``UNAVAILABLE``), the client waits with
exponential backoff (0.5 s doubling to 10 s) until it is back or ``reconnect_timeout_s`` has passed,
opens a new session and repeats the interrupted action from its start. Other refusals are raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.client.settings import ClientSettings
from splitfed.transport.errors import RemoteError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ServerLink:
    """Holds the current ``RemoteTrunk``; ``call`` runs an action on it, surviving server restarts."""

    def __init__(self, settings: ClientSettings, connect: Callable[[], RemoteTrunk],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._connect = connect
        self._sleep = sleep
        self.reconnects = 0
        self._sent = self._received = 0
        self.remote = self._connect_with_retry()

    @property
    def bytes_sent(self) -> int:
        return self._sent + self.remote.connection.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._received + self.remote.connection.bytes_received

    def _connect_with_retry(self) -> RemoteTrunk:
        deadline = time.monotonic() + self.settings.reconnect_timeout_s
        delay = 0.5
        while True:
            try:
                return self._connect()
            except RemoteError as error:
                if error.status != "UNAVAILABLE" or time.monotonic() + delay > deadline:
                    raise
                log.warning("trunk server unavailable (%s); retrying in %.1fs", error.message, delay)
                self._sleep(delay)
                delay = min(delay * 2, 10.0)

    def call(self, action: Callable[[RemoteTrunk], T], on_reconnect: Callable[[RemoteTrunk], None]) -> T:
        """``action(remote)``; if the server goes away, reconnect, ``on_reconnect(new remote)``, repeat."""
        while True:
            try:
                return action(self.remote)
            except RemoteError as error:
                if error.status != "UNAVAILABLE":
                    raise
                log.warning("lost the trunk server (%s); reconnecting", error.message)
                self._drop()
                self.remote = self._connect_with_retry()
                self.reconnects += 1
                on_reconnect(self.remote)

    def _drop(self) -> None:
        self._sent += self.remote.connection.bytes_sent
        self._received += self.remote.connection.bytes_received
        self.remote.connection.close()

    def close(self, interrupted: bool = False) -> None:
        """End the session; ``interrupted`` tells the server this client will resume later."""
        try:
            self.remote.close(interrupted=interrupted)
        except RemoteError as error:
            log.info("could not close the session cleanly: %s", error.message)
        finally:
            self.remote.connection.close()
