"""The int8-blockwise codec: its error bound, its bytes, and one error code per malformed claim."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitfed.transport import (
    INT8_BLOCKWISE,
    WIRE_CODECS,
    WIRE_DTYPES,
    Codec,
    TensorLimits,
    WireFormatError,
    decode_tensor,
    encode_like,
    encode_tensor,
    pb,
)

LIMITS = TensorLimits(frozenset(WIRE_CODECS), max_elements=1 << 20, max_bytes=1 << 22)
TINY = 1e-42  # float32 rounding of a subnormal scale (absmax below 1.5e-36): at most 127 * 2**-150


def _block_absmax(flat: torch.Tensor, block: int) -> torch.Tensor:
    """Per element, the absmax of its block."""
    padded = torch.cat([flat, flat.new_zeros(-(-flat.numel() // block) * block - flat.numel())])
    return padded.view(-1, block).abs().amax(dim=1).repeat_interleave(block)[: flat.numel()]


@st.composite
def tensors(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))
    scale = draw(st.sampled_from([1e-38, 1e-30, 1e-8, 1.0, 1e8, 1e30]))
    values = draw(st.lists(st.floats(-1.0, 1.0, width=32), min_size=math.prod(shape),
                           max_size=math.prod(shape)))
    return torch.tensor(values, dtype=torch.float32).reshape(shape) * scale


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor=tensors(), block=st.integers(8, 300))
def test_round_trip_error_is_within_half_a_step_of_the_block(tensor, block):
    msg = encode_tensor(tensor, INT8_BLOCKWISE, block)
    decoded = decode_tensor(msg, LIMITS, tuple(tensor.shape))
    flat, absmax = tensor.reshape(-1), _block_absmax(tensor.reshape(-1), block)
    error = (decoded.reshape(-1) - flat).abs()
    assert bool((error <= absmax / 254 + absmax * 2.0**-21 + TINY).all())
    assert bool((decoded.reshape(-1).abs() <= absmax * (1 + 2.0**-21) + TINY).all())
    assert torch.equal(Codec(INT8_BLOCKWISE, block).round_trip(tensor), decoded)  # what error feedback uses


def test_measured_error_on_gaussian_hidden_states():
    hidden = torch.randn(4, 128, 576, generator=torch.Generator().manual_seed(0))
    decoded = decode_tensor(encode_tensor(hidden, INT8_BLOCKWISE), LIMITS)
    ratio = (decoded - hidden).abs().reshape(-1) / _block_absmax(hidden.reshape(-1), 64)
    assert 0.49 / 254 < float(ratio.max()) <= 1 / 254 + 1e-6  # the bound is reached, never passed
    relative = float((decoded - hidden).norm() / hidden.norm())
    assert 0.005 < relative < 0.012  # about 0.8% in L2 for N(0, 1) blocks of 64


def test_bytes_per_element_are_a_quarter_of_float32():
    hidden = torch.randn(4, 128, 576)  # SmolLM2's hidden size: 9 blocks of 64 per token
    msg = encode_tensor(hidden, INT8_BLOCKWISE, 64)
    tokens, size = 4 * 128, 576
    assert len(msg.data) == hidden.numel() and len(msg.scales) == 4 * hidden.numel() // 64
    per_token = (len(msg.data) + len(msg.scales)) / tokens
    assert per_token == size * (1 + 4 / 64)  # 1.0625 bytes per element
    assert msg.ByteSize() <= 1.1 * size * tokens  # with the message's own fields
    assert msg.ByteSize() <= 0.275 * encode_tensor(hidden, "float32").ByteSize()


def test_zeros_and_the_block_maximum_travel_exactly():
    tensor = torch.tensor([0.0] * 8 + [3.0, -1.2, 0.0, 0.75, -3.0, 1.0, 2.0, 0.5])
    msg = encode_tensor(tensor, INT8_BLOCKWISE, 8)
    assert struct.unpack("<2f", msg.scales) == (0.0, pytest.approx(3.0 / 127))
    assert list(msg.data[8:]) == [127, 205, 0, 32, 129, 42, 85, 21]  # -51 = 205, -127 = 129
    decoded = decode_tensor(msg, LIMITS)
    assert torch.equal(decoded[:8], torch.zeros(8))
    assert abs(float(decoded[8]) - 3.0) <= 3.0 * 2.0**-22


def test_a_shorter_last_block_and_replies_in_the_request_codec():
    tensor = torch.randn(3, 7)  # 21 elements in blocks of 8: 8, 8, 5
    msg = encode_tensor(tensor, INT8_BLOCKWISE, 8)
    assert len(msg.scales) == 3 * 4 and msg.block_size == 8
    reply = encode_like(torch.randn(3, 7), msg)
    assert (reply.dtype, reply.block_size) == (INT8_BLOCKWISE, 8)
    float_reply = encode_like(torch.randn(2), encode_tensor(torch.randn(2), "bfloat16"))
    assert (float_reply.dtype, float_reply.block_size, float_reply.scales) == ("bfloat16", 0, b"")


def test_non_finite_input_travels_as_a_nan_scale_the_receiver_refuses():
    tensor = torch.ones(16)
    tensor[9] = float("inf")
    msg = encode_tensor(tensor, INT8_BLOCKWISE, 8)
    first, second = struct.unpack("<2f", msg.scales)
    assert first == pytest.approx(1 / 127) and math.isnan(second)
    with pytest.raises(WireFormatError) as info:
        decode_tensor(msg, LIMITS)
    assert info.value.code == "not_finite"


def _int8(numel: int = 20, block: int = 8, scales: bytes | None = None, data: bytes | None = None,
          dtype: str = INT8_BLOCKWISE) -> pb.Tensor:
    good = encode_tensor(torch.randn(numel), INT8_BLOCKWISE, 8)
    return pb.Tensor(dtype=dtype, shape=[numel], data=good.data if data is None else data,
                     scales=good.scales if scales is None else scales, block_size=block)


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (_int8(scales=b"\0" * 8), "bad_scales"),  # 2 scales for 3 blocks
        (_int8(scales=b"\0" * 16), "bad_scales"),  # 4 scales for 3 blocks
        (_int8(scales=b"\0" * 11), "bad_scales"),
        (_int8(scales=b""), "bad_scales"),
        (_int8(scales=struct.pack("<3f", 0.1, float("nan"), 0.1)), "not_finite"),
        (_int8(scales=struct.pack("<3f", 0.1, 0.1, float("inf"))), "not_finite"),
        (_int8(scales=struct.pack("<3f", 0.1, -0.1, 0.1)), "bad_scales"),
        (_int8(scales=struct.pack("<3f", 3e38, 0.1, 0.1), data=b"\x7f" * 20), "not_finite"),  # 127 * 3e38
        (_int8(block=0), "bad_block_size"),
        (_int8(block=7), "bad_block_size"),
        (_int8(block=65537), "bad_block_size"),
        (_int8(block=-8), "bad_block_size"),
        (_int8(data=b"\0" * 19), "bad_length"),
        (_int8(data=b"\0" * 80), "bad_length"),  # float32-sized data under the int8 codec
        (_int8(data=b"\x80" + b"\0" * 19), "bad_value"),  # -128
        (_int8(dtype="int4-blockwise"), "bad_dtype"),  # an unknown codec
        (_int8(dtype="int8"), "bad_dtype"),
        (pb.Tensor(dtype="float32", shape=[2], data=b"\0" * 8, scales=b"\0" * 4), "bad_scales"),
        (pb.Tensor(dtype="bfloat16", shape=[2], data=b"\0" * 4, block_size=64), "bad_scales"),
        (pb.Tensor(dtype=INT8_BLOCKWISE, shape=[1 << 20, 2], data=b"", block_size=64), "too_large"),
    ],
)
def test_each_violation_has_its_code(msg, code):
    with pytest.raises(WireFormatError) as info:
        decode_tensor(msg, LIMITS)
    assert info.value.code == code and info.value.message


def test_scale_bytes_count_towards_the_byte_limit():
    limits = TensorLimits(frozenset(WIRE_CODECS), max_elements=1000, max_bytes=120)
    assert decode_tensor(encode_tensor(torch.randn(96), INT8_BLOCKWISE, 32), limits).shape == (96,)  # 108
    with pytest.raises(WireFormatError) as info:  # 96 + 12 * 4 = 144 bytes
        decode_tensor(encode_tensor(torch.randn(96), INT8_BLOCKWISE, 8), limits)
    assert info.value.code == "too_large"


def test_a_receiver_that_does_not_accept_the_codec_refuses_it():
    limits = TensorLimits(frozenset(WIRE_DTYPES), max_elements=100, max_bytes=1000)
    with pytest.raises(WireFormatError) as info:
        decode_tensor(encode_tensor(torch.randn(10), INT8_BLOCKWISE), limits)
    assert info.value.code == "bad_dtype" and "int8-blockwise" in info.value.message


def test_huge_int8_shape_claims_are_refused_without_allocating(monkeypatch):
    def no_alloc(*args, **kwargs):
        raise AssertionError("decode_tensor allocated from a shape claim")

    monkeypatch.setattr(torch, "frombuffer", no_alloc)
    for shape, block in (([10**12], 8), ([1 << 40, 1 << 40], 65536), ([(1 << 63) - 1] * 8, 64)):
        with pytest.raises(WireFormatError) as info:
            decode_tensor(pb.Tensor(dtype=INT8_BLOCKWISE, shape=shape, data=b"\0", block_size=block), LIMITS)
        assert info.value.code == "too_large"


def test_codecs_and_block_sizes_are_checked_when_chosen():
    assert Codec().name == "float32" and Codec(INT8_BLOCKWISE, 8).block_size == 8
    for bad in ({"name": "int4"}, {"name": INT8_BLOCKWISE, "block_size": 4},
                {"name": INT8_BLOCKWISE, "block_size": 1 << 17}):
        with pytest.raises(ValueError):
            Codec(**bad)
    with pytest.raises(ValueError):
        encode_tensor(torch.ones(16), INT8_BLOCKWISE, 4)
    assert torch.equal(Codec("bfloat16").round_trip(torch.tensor([1.0 + 2**-10])), torch.tensor([1.0]))
