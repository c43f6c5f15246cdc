"""Splitting payloads larger than a gRPC message into chunks, and putting them back together."""

from __future__ import annotations

from splitfed.transport.errors import WireFormatError

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default receive limit
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024  # leaves ample room for the Sealed envelope


def split_bytes(data: bytes, max_chunk: int = DEFAULT_CHUNK_BYTES) -> list[bytes]:
    """Cut ``data`` into pieces of at most ``max_chunk`` bytes; always at least one (empty) piece."""
    if max_chunk < 1:
        raise ValueError(f"max_chunk must be positive, got {max_chunk}")
    if not data:
        return [b""]
    view = memoryview(data)
    return [bytes(view[start : start + max_chunk]) for start in range(0, len(data), max_chunk)]


class Reassembler:
    """Collects the chunks of one message at a time, strictly in order.

    ``add`` returns the whole message once its last chunk arrives (and then starts afresh for the
    next message), ``None`` before that. Inconsistent counts (``bad_chunk_count``), out-of-order or
    duplicate indices (``bad_chunk_index``), empty chunks of a multi-chunk message (``bad_chunk``) and
    totals beyond ``max_total_bytes`` (``too_large``) raise ``WireFormatError``; the partial message
    is dropped.
    """

    def __init__(self, max_total_bytes: int) -> None:
        if max_total_bytes < 0:
            raise ValueError(f"max_total_bytes must be non-negative, got {max_total_bytes}")
        self.max_total_bytes = max_total_bytes
        self.reset()

    def reset(self) -> None:
        """Forget any partial message."""
        self._parts: list[bytes] = []
        self._count = 0
        self._size = 0

    @property
    def pending(self) -> bool:
        """Whether a message is partly received."""
        return bool(self._parts)

    def add(self, index: int, count: int, data: bytes) -> bytes | None:
        """Accept chunk ``index`` of ``count``; return the full message when it is complete."""
        try:
            return self._add(index, count, data)
        except WireFormatError:
            self.reset()
            raise

    def _add(self, index: int, count: int, data: bytes) -> bytes | None:
        if count < 1:
            raise WireFormatError("bad_chunk_count", f"chunk count {count} is below 1")
        if count > 1 and count > self.max_total_bytes:
            raise WireFormatError(
                "too_large", f"{count} non-empty chunks exceed {self.max_total_bytes} bytes"
            )
        if self._parts and count != self._count:
            raise WireFormatError("bad_chunk_count", f"chunk count changed from {self._count} to {count}")
        expected = len(self._parts)
        if index != expected:
            raise WireFormatError("bad_chunk_index", f"got chunk {index}, expected {expected} of {count}")
        if count > 1 and not data:
            raise WireFormatError("bad_chunk", f"chunk {index} of {count} is empty")
        if self._size + len(data) > self.max_total_bytes:
            raise WireFormatError(
                "too_large", f"message exceeds {self.max_total_bytes} bytes at chunk {index} of {count}"
            )
        self._parts.append(bytes(data))
        self._count = count
        self._size += len(data)
        if index + 1 < count:
            return None
        message = b"".join(self._parts)
        self.reset()
        return message
