"""The one error type for anything malformed or oversized that arrives from the wire."""

from __future__ import annotations


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
    """The server refused a request or could not be reached (the client side of ``ServiceError``)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
