"""Tensor codec: exact round trips, documented byte layout, and one error code per violation."""

from __future__ import annotations

import struct
import sys
import time

import pytest
import torch

from splitfed.transport import WIRE_DTYPES, TensorLimits, WireFormatError, decode_tensor, encode_tensor, pb

LIMITS = TensorLimits(frozenset(WIRE_DTYPES), max_elements=1 << 20, max_bytes=1 << 22)


def _msg(dtype: str = "float32", shape=(2, 3), data: bytes | None = None, fill: float = 1.0) -> pb.Tensor:
    if data is None:
        numel = 1
        for dim in shape:
            numel *= dim
        data = encode_tensor(torch.full((numel,), fill), dtype).data
    return pb.Tensor(dtype=dtype, shape=list(shape), data=data)


def test_float32_round_trip_is_exact_and_little_endian():
    tensor = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    msg = encode_tensor(tensor)
    assert msg.dtype == "float32" and list(msg.shape) == [3, 5, 7]
    assert len(msg.data) == tensor.numel() * 4
    if sys.byteorder == "little":
        assert msg.data == tensor.numpy().tobytes()
    decoded = decode_tensor(msg, LIMITS, expected_shape=(3, 5, 7))
    assert decoded.dtype == torch.float32 and torch.equal(decoded, tensor)


@pytest.mark.parametrize("wire_dtype", ["bfloat16", "float16"])
def test_half_precision_round_trip(wire_dtype):
    tensor = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(1))
    msg = encode_tensor(tensor, wire_dtype)
    assert len(msg.data) == tensor.numel() * 2  # documented: numel * itemsize
    decoded = decode_tensor(msg, LIMITS)
    assert decoded.shape == tensor.shape and decoded.dtype == torch.float32
    # Exactly the wire dtype's rounding of the input, hence within its precision.
    assert torch.equal(decoded, tensor.to(WIRE_DTYPES[wire_dtype]).float())
    eps = torch.finfo(WIRE_DTYPES[wire_dtype]).eps
    torch.testing.assert_close(decoded, tensor, rtol=eps, atol=eps)


def test_bfloat16_bytes_are_the_high_halves_of_float32():
    tensor = torch.tensor([1.0, -2.0, 0.5])  # exactly representable in bf16
    expected = b"".join(struct.pack("<f", value)[2:] for value in tensor.tolist())
    assert encode_tensor(tensor, "bfloat16").data == expected


def test_non_contiguous_grad_and_out_dtype():
    base = torch.randn(4, 5, requires_grad=True)
    view = base.t()[1:]
    assert not view.is_contiguous()
    decoded = decode_tensor(encode_tensor(view), LIMITS, out_dtype=torch.bfloat16)
    assert decoded.dtype == torch.bfloat16
    assert torch.equal(decoded, view.detach().to(torch.bfloat16))


def test_decoded_tensor_owns_writable_memory():
    msg = encode_tensor(torch.ones(2, 2))
    decoded = decode_tensor(msg, LIMITS)
    decoded.add_(1.0)  # would warn/fail on a read-only buffer
    assert torch.equal(decode_tensor(msg, LIMITS), torch.ones(2, 2))


@pytest.mark.parametrize(
    ("msg", "expected_shape", "code"),
    [
        (_msg(dtype="int8", data=b"\0" * 6), None, "bad_dtype"),
        (_msg(dtype="float64", data=b"\0" * 48), None, "bad_dtype"),
        (_msg(dtype="", data=b""), None, "bad_dtype"),
        (_msg(shape=(2, 0, 3), data=b""), None, "bad_shape"),
        (_msg(shape=(-1, 4), data=b"\0" * 16), None, "bad_shape"),
        (_msg(shape=(), data=b"\0" * 4), None, "bad_shape"),
        (_msg(shape=(1,) * 9), None, "bad_shape"),
        (_msg(shape=(2, 3, 5)), (None, 3, 4), "bad_shape"),
        (_msg(shape=(2, 3)), (2, 3, 1), "bad_shape"),
        (_msg(shape=(2, 3), data=b"\0" * 23), None, "bad_length"),
        (_msg(shape=(2, 3), data=b"\0" * 25), None, "bad_length"),
        (_msg(shape=(2, 3), data=b""), None, "bad_length"),
        (_msg(dtype="bfloat16", shape=(2, 3), data=b"\0" * 24), None, "bad_length"),
        (_msg(shape=(1 << 21,), data=b"\0" * 4), None, "too_large"),
        (_msg(shape=(1 << 20, 2), data=b"\0" * 4), None, "too_large"),
        (_msg(fill=float("nan")), None, "not_finite"),
        (_msg(fill=float("inf")), None, "not_finite"),
        (_msg(fill=float("-inf")), None, "not_finite"),
        (_msg(dtype="float16", fill=float("inf")), None, "not_finite"),
        (_msg(dtype="bfloat16", fill=float("nan")), None, "not_finite"),
    ],
)
def test_each_violation_has_its_code(msg, expected_shape, code):
    with pytest.raises(WireFormatError) as info:
        decode_tensor(msg, LIMITS, expected_shape=expected_shape)
    assert info.value.code == code
    assert info.value.message and isinstance(info.value, ValueError)


def test_dtype_known_but_not_allowed_by_limits():
    limits = TensorLimits(frozenset({"bfloat16"}), max_elements=100, max_bytes=1000)
    with pytest.raises(WireFormatError) as info:
        decode_tensor(_msg(dtype="float32"), limits)
    assert info.value.code == "bad_dtype"


def test_byte_limit_applies_separately_from_element_limit():
    limits = TensorLimits(frozenset(WIRE_DTYPES), max_elements=1000, max_bytes=100)
    assert decode_tensor(_msg(dtype="float16", shape=(50,)), limits).shape == (50,)
    with pytest.raises(WireFormatError) as info:
        decode_tensor(_msg(dtype="float32", shape=(50,)), limits)
    assert info.value.code == "too_large"


def test_overflow_when_casting_to_out_dtype_is_not_finite():
    with pytest.raises(WireFormatError) as info:
        decode_tensor(_msg(fill=1e6), LIMITS, out_dtype=torch.float16)
    assert info.value.code == "not_finite"


def test_error_messages_do_not_leak_values():
    secret = 123456.78125
    data = encode_tensor(torch.tensor([secret, float("nan")])).data
    with pytest.raises(WireFormatError) as info:
        decode_tensor(pb.Tensor(dtype="float32", shape=[2], data=data), LIMITS)
    assert "123456" not in str(info.value)


@pytest.mark.parametrize("limits", [LIMITS, TensorLimits(frozenset(WIRE_DTYPES), 1 << 62, 1 << 62)])
def test_huge_shape_claim_is_rejected_without_allocating(limits, monkeypatch):
    def no_alloc(*args, **kwargs):
        raise AssertionError("decode_tensor allocated from a shape claim")

    monkeypatch.setattr(torch, "frombuffer", no_alloc)
    for shape in ([10**12], [1 << 40, 1 << 40], [(1 << 63) - 1] * 8):
        start = time.perf_counter()
        with pytest.raises(WireFormatError) as info:
            decode_tensor(pb.Tensor(dtype="float32", shape=shape, data=b"\0" * 4), limits)
        assert time.perf_counter() - start < 0.05
        assert info.value.code in {"too_large", "bad_length"}


def test_encode_rejects_what_cannot_be_sent():
    with pytest.raises(ValueError):
        encode_tensor(torch.tensor(1.0))
    with pytest.raises(ValueError):
        encode_tensor(torch.ones(2, 0))
    with pytest.raises(ValueError):
        encode_tensor(torch.ones(2), "int8")


def test_limits_reject_unknown_dtypes_and_nonpositive_caps():
    with pytest.raises(ValueError):
        TensorLimits(frozenset({"float64"}), 10, 10)
    with pytest.raises(ValueError):
        TensorLimits(frozenset({"float32"}), 0, 10)
