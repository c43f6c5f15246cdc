"""Chunking: exact round trips, and every malformed chunk sequence is rejected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfed.transport import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    Reassembler,
    WireFormatError,
    pb,
    split_bytes,
)


def _feed(reassembler: Reassembler, chunks: list[bytes]) -> bytes | None:
    result = None
    for index, chunk in enumerate(chunks):
        assert result is None, "completed before the last chunk"
        result = reassembler.add(index, len(chunks), chunk)
    return result


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), max_chunk=st.integers(1, 64))
def test_round_trip(data, max_chunk):
    chunks = split_bytes(data, max_chunk)
    assert len(chunks) == max(1, -(-len(data) // max_chunk))
    assert all(0 < len(chunk) <= max_chunk for chunk in chunks) or data == b""
    reassembler = Reassembler(max_total_bytes=len(data))
    assert _feed(reassembler, chunks) == data
    assert not reassembler.pending


@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 53])
def test_boundaries_and_reuse_for_consecutive_messages(size):
    data = bytes(range(256)) * 1
    data = (data * (size // 256 + 1))[:size]
    reassembler = Reassembler(max_total_bytes=100)
    for _ in range(2):
        assert _feed(reassembler, split_bytes(data, 10)) == data


def test_default_chunk_fits_in_default_grpc_message():
    assert DEFAULT_CHUNK_BYTES == 2 * 1024 * 1024 and DEFAULT_MAX_MESSAGE_BYTES == 4 * 1024 * 1024
    chunk = split_bytes(b"\xff" * (DEFAULT_CHUNK_BYTES + 1))[0]
    sealed = pb.Sealed(
        session_id=b"\xff" * 32, kind="backward_reply", step=2**64 - 1, counter=2**64 - 1,
        ciphertext=chunk, chunk_index=2**32 - 1, chunk_count=2**32 - 1,
    )  # fmt: skip
    assert sealed.ByteSize() < DEFAULT_MAX_MESSAGE_BYTES


def test_split_rejects_nonpositive_chunk_size():
    with pytest.raises(ValueError):
        split_bytes(b"abc", 0)


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        ([(0, 0, b"a")], "bad_chunk_count"),
        ([(0, 3, b"a"), (1, 2, b"b")], "bad_chunk_count"),
        ([(0, 3, b"a"), (0, 3, b"a")], "bad_chunk_index"),
        ([(0, 3, b"a"), (2, 3, b"c")], "bad_chunk_index"),
        ([(1, 3, b"b")], "bad_chunk_index"),
        ([(1, 1, b"b")], "bad_chunk_index"),
        ([(0, 3, b"a"), (1, 3, b"")], "bad_chunk"),
        ([(0, 3, b"abcd"), (1, 3, b"efgh"), (2, 3, b"ijk")], "too_large"),
        ([(0, 1, b"x" * 11)], "too_large"),
        ([(0, 11, b"x")], "too_large"),
    ],
)
def test_rejections(steps, code):
    reassembler = Reassembler(max_total_bytes=10)
    *ok, (index, count, data) = steps
    for step in ok:
        assert reassembler.add(*step) is None
    with pytest.raises(WireFormatError) as info:
        reassembler.add(index, count, data)
    assert info.value.code == code
    assert not reassembler.pending  # the partial message is dropped...
    assert _feed(reassembler, [b"ok", b"!"]) == b"ok!"  # ...and the next one starts cleanly
