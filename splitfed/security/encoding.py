"""Canonical, unambiguous byte encoding: a sequence of length-prefixed fields.

Each field is a 4-byte big-endian length followed by its bytes. Decoding is strict: the exact number of
fields, no trailing bytes, and a cap on the total size. Used for signed transcripts, the wire format of
the handshake messages and the AEAD associated data.
"""

from __future__ import annotations

import struct

MAX_FIELD = 1 << 31


def pack(*fields: bytes) -> bytes:
    """Concatenate `fields`, each prefixed by its 4-byte big-endian length."""
    out = bytearray()
    for field in fields:
        if not isinstance(field, bytes | bytearray | memoryview):
            raise TypeError(f"field must be bytes, not {type(field).__name__}")
        out += struct.pack(">I", len(field))
        out += field
    return bytes(out)


def unpack(data: bytes, count: int, max_size: int) -> list[bytes]:
    """Split `data` made by `pack` into exactly `count` fields; `ValueError` if it is anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) > max_size:
        raise ValueError(f"message too long ({len(view)} > {max_size} bytes)")
    fields, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(view):
            raise ValueError("message truncated")
        (length,) = struct.unpack_from(">I", view, offset)
        offset += 4
        if length > len(view) - offset:
            raise ValueError("message truncated")
        fields.append(bytes(view[offset:offset + length]))
        offset += length
    if offset != len(view):
        raise ValueError("trailing bytes after message")
    return fields


def encode_uint(value: int, size: int) -> bytes:
    """`value` as a `size`-byte big-endian unsigned integer."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << (8 * size):
        raise ValueError(f"expected an integer in [0, 2**{8 * size})")
    return value.to_bytes(size, "big")


def decode_uint(data: bytes, size: int) -> int:
    """Inverse of `encode_uint`; `ValueError` unless `data` is exactly `size` bytes."""
    if len(data) != size:
        raise ValueError(f"expected a {size}-byte integer, got {len(data)} bytes")
    return int.from_bytes(data, "big")
