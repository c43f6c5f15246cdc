"""Errors of the wire: what a peer sent that this side refuses, what the server refuses, and what a
client is told. A refusal's ``code`` travels typed, as ``ErrorInfo`` under ``ERROR_METADATA_KEY`` in the
call's trailing metadata, so a client matches codes, never message text."""

from __future__ import annotations

ERROR_METADATA_KEY = "splitfed-error-bin"
MAX_ERROR_MESSAGE = 1024  # characters of a refusal's message that travel in ErrorInfo


class WireFormatError(ValueError):
    """A peer sent something this side will not accept.

    ``code`` is a stable machine-readable reason (e.g. ``"bad_shape"``) suitable for ``pb.ErrorInfo``;
    ``message`` is for humans and never contains tensor contents.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServiceError(Exception):
    """A request the server refuses: ``status`` is a gRPC status name (``"INVALID_ARGUMENT"``, ...),
    ``code`` a stable machine-readable reason and ``message`` a human explanation without secrets."""

    def __init__(self, status: str, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class RemoteError(RuntimeError):
    """The server refused a request or could not be reached (the client side of ``ServiceError``):
    ``status`` a gRPC status name, ``code`` the server's machine-readable reason (``"stale_cache"``,
    ``"bad_round"``, ...; empty when the call never reached the trunk service)."""

    def __init__(self, status: str, message: str, code: str = "") -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code
