"""Property: anything a peer can send, in any codec, either decodes to a finite tensor of the claimed
shape or raises WireFormatError, never any other exception."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitfed.transport import (
    INT8_BLOCKWISE,
    WIRE_CODECS,
    WIRE_DTYPES,
    TensorLimits,
    WireFormatError,
    decode_tensor,
    encode_tensor,
    pb,
)
from splitfed.transport.envelope import parse_message

LIMITS = TensorLimits(frozenset(WIRE_CODECS), max_elements=4096, max_bytes=16384)
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.one_of(st.sampled_from(WIRE_CODECS), st.text(max_size=16))
dims = st.one_of(st.integers(-2, 8), st.integers(-(1 << 63), (1 << 63) - 1))
shapes = st.lists(dims, max_size=10)
expected_shapes = st.none() | st.lists(st.none() | st.integers(1, 8), max_size=4).map(tuple)
out_dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])
block_sizes = st.one_of(st.integers(0, 20), st.integers(-(1 << 31), (1 << 31) - 1))
CODES = {"bad_dtype", "bad_shape", "bad_length", "too_large", "not_finite", "bad_block_size", "bad_scales",
         "bad_value"}


@st.composite
def well_formed(draw) -> pb.Tensor:
    """Consistent codec, shape and byte lengths, arbitrary bytes (so NaN/Inf/-128 can occur)."""
    dtype = draw(st.sampled_from(WIRE_CODECS))
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    numel = math.prod(shape)
    if dtype == INT8_BLOCKWISE:
        block = draw(st.integers(8, 64))
        scales = -(-numel // block) * 4
        return pb.Tensor(dtype=dtype, shape=shape, data=draw(st.binary(min_size=numel, max_size=numel)),
                         scales=draw(st.binary(min_size=scales, max_size=scales)), block_size=block)
    nbytes = numel * WIRE_DTYPES[dtype].itemsize
    return pb.Tensor(dtype=dtype, shape=shape, data=draw(st.binary(min_size=nbytes, max_size=nbytes)))


def _check(msg: pb.Tensor, expected_shape, out_dtype) -> None:
    try:
        tensor = decode_tensor(msg, LIMITS, expected_shape=expected_shape, out_dtype=out_dtype)
    except WireFormatError as error:
        assert error.code in CODES
        return
    assert tuple(tensor.shape) == tuple(msg.shape)
    assert tensor.dtype == out_dtype
    assert bool(torch.isfinite(tensor).all())
    if expected_shape is not None:
        assert all(e is None or e == d for d, e in zip(tensor.shape, expected_shape, strict=True))
    if out_dtype == torch.float32 and msg.dtype != INT8_BLOCKWISE:  # widening is exact: same bytes again
        assert encode_tensor(tensor, msg.dtype).data == msg.data


@SETTINGS
@given(data=st.binary(max_size=300), out_dtype=out_dtypes)
def test_arbitrary_bytes_as_tensor_message(data, out_dtype):
    try:
        msg = parse_message(pb.Tensor, data)
    except WireFormatError as error:
        assert error.code == "bad_message"
        return
    _check(msg, None, out_dtype)


@SETTINGS
@given(
    dtype=dtypes, shape=shapes, data=st.binary(max_size=600), expected=expected_shapes, out_dtype=out_dtypes,
    scales=st.binary(max_size=80), block_size=block_sizes,
)
def test_arbitrary_field_values(dtype, shape, data, expected, out_dtype, scales, block_size):
    _check(pb.Tensor(dtype=dtype, shape=shape, data=data, scales=scales, block_size=block_size), expected,
           out_dtype)


@SETTINGS
@given(msg=well_formed(), out_dtype=out_dtypes)
def test_well_formed_messages_decode_unless_not_finite(msg, out_dtype):
    _check(msg, None, out_dtype)
    try:
        decode_tensor(msg, LIMITS, out_dtype=torch.float32)
    except WireFormatError as error:  # int8: a NaN/inf or negative scale, or a -128 value
        assert error.code in {"not_finite", "bad_scales", "bad_value"}
        assert error.code == "not_finite" or msg.dtype == INT8_BLOCKWISE
