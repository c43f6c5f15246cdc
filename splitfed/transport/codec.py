"""Tensors and attention lengths <-> protobuf messages, checking every claim before allocating.

A tensor travels in one of the ``WIRE_CODECS``: a float dtype as it is, or int8 blockwise
(``splitfed.transport.quantize``), about a quarter of float32's bytes."""

from __future__ import annotations

import math
import sys
import typing
from dataclasses import dataclass
from typing import Literal

import torch

from splitfed.transport import splitfed_pb2 as pb
from splitfed.transport.errors import WireFormatError
from splitfed.transport.quantize import (
    DEFAULT_BLOCK_SIZE,
    INT8_BLOCKWISE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    SCALE_BYTES,
    dequantize,
    num_blocks,
    quantize,
    round_trip,
    scales_from_bytes,
    scales_to_bytes,
)

WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
CodecName = Literal["float32", "bfloat16", "float16", "int8-blockwise"]  # for settings
WIRE_CODECS: tuple[str, ...] = typing.get_args(CodecName)
MAX_RANK = 8
DEFAULT_MAX_BATCH = 4096
DEFAULT_MAX_LENGTH = 1 << 16
ADAPTER_ELEMENTS = 1 << 26  # the largest adapter tensor a FedAvg round carries, each way
ADAPTER_BYTES = 1 << 28

_BIG_ENDIAN = sys.byteorder == "big"


@dataclass(frozen=True)
class TensorLimits:
    """What a receiver accepts: wire codecs (``dtypes``), and caps on element count and byte size."""

    dtypes: frozenset[str]
    max_elements: int
    max_bytes: int

    def __post_init__(self) -> None:
        unknown = set(self.dtypes) - set(WIRE_CODECS)
        if unknown:
            raise ValueError(f"unknown wire codecs {sorted(unknown)}; known: {list(WIRE_CODECS)}")
        if self.max_elements < 1 or self.max_bytes < 1:
            raise ValueError("max_elements and max_bytes must be positive")


def adapter_limits(dtypes: frozenset[str] = frozenset({"float32"})) -> TensorLimits:
    """What an adapter tensor of a FedAvg round may be (both sides)."""
    return TensorLimits(dtypes=dtypes, max_elements=ADAPTER_ELEMENTS, max_bytes=ADAPTER_BYTES)


def _swap_bytes(flat_bytes: torch.Tensor, itemsize: int) -> torch.Tensor:
    """Reverse the byte order of each element of a flat uint8 tensor (big-endian hosts only)."""
    return flat_bytes.view(-1, itemsize).flip(-1).reshape(-1)


def encode_tensor(tensor: torch.Tensor, wire_dtype: str = "float32",
                  block_size: int = DEFAULT_BLOCK_SIZE) -> pb.Tensor:
    """Pack ``tensor`` in codec ``wire_dtype``: a float dtype as C-contiguous little-endian bytes, or
    int8 blockwise with ``block_size`` elements per scale.

    Values outside the wire dtype's range become inf, which the receiver rejects (``not_finite``); so
    does an int8 block holding NaN or inf (it travels with a NaN scale).
    """
    if wire_dtype not in WIRE_CODECS:
        raise ValueError(f"unknown wire codec {wire_dtype!r}; known: {list(WIRE_CODECS)}")
    if not 1 <= tensor.dim() <= MAX_RANK or tensor.numel() == 0:
        raise ValueError(
            f"cannot send a tensor of shape {tuple(tensor.shape)}: need rank 1..{MAX_RANK}, no empty dims"
        )
    if wire_dtype == INT8_BLOCKWISE:
        q, scales = quantize(tensor, block_size)
        return pb.Tensor(dtype=wire_dtype, shape=tensor.shape, data=q.view(torch.uint8).numpy().tobytes(),
                         scales=scales_to_bytes(scales), block_size=block_size)
    dtype = WIRE_DTYPES[wire_dtype]
    flat = tensor.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1).view(torch.uint8)
    if _BIG_ENDIAN:
        flat = _swap_bytes(flat, dtype.itemsize)
    return pb.Tensor(dtype=wire_dtype, shape=tensor.shape, data=flat.numpy().tobytes())


def encode_like(tensor: torch.Tensor, template: pb.Tensor) -> pb.Tensor:
    """``tensor`` in the codec (and block size) ``template`` came in: a reply mirrors its request."""
    return encode_tensor(tensor, template.dtype, template.block_size or DEFAULT_BLOCK_SIZE)


@dataclass(frozen=True)
class Codec:
    """How one direction's tensors travel: a wire codec and, for int8-blockwise, its block size."""

    name: str = "float32"
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        if self.name not in WIRE_CODECS:
            raise ValueError(f"unknown wire codec {self.name!r}; known: {list(WIRE_CODECS)}")
        if not MIN_BLOCK_SIZE <= self.block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be within {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}")

    def encode(self, tensor: torch.Tensor) -> pb.Tensor:
        return encode_tensor(tensor, self.name, self.block_size)

    def round_trip(self, tensor: torch.Tensor) -> torch.Tensor:
        """What the receiver decodes for ``tensor``, as float32 (error feedback keeps the difference)."""
        if self.name == INT8_BLOCKWISE:
            return round_trip(tensor, self.block_size)
        return tensor.detach().to(WIRE_DTYPES[self.name]).to(torch.float32)


def _check_shape(shape: list[int], expected: tuple[int | None, ...] | None) -> None:
    if not 1 <= len(shape) <= MAX_RANK:
        raise WireFormatError("bad_shape", f"rank {len(shape)} is outside 1..{MAX_RANK}")
    if any(dim < 1 for dim in shape):
        raise WireFormatError("bad_shape", f"shape {shape} has a dimension below 1")
    if expected is not None:
        matches = len(shape) == len(expected) and all(
            e is None or e == d for d, e in zip(shape, expected, strict=True)
        )
        if not matches:
            wanted = tuple("*" if e is None else e for e in expected)
            raise WireFormatError("bad_shape", f"shape {shape} does not match expected {wanted}")


def decode_tensor(
    msg: pb.Tensor,
    limits: TensorLimits,
    expected_shape: tuple[int | None, ...] | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Validate ``msg`` against ``limits`` and ``expected_shape`` (``None`` = any size), then unpack it.

    Codec, shape, size, byte lengths (and for int8-blockwise the block size and scales) are checked
    before anything is allocated; values are checked to be finite after the cast to ``out_dtype``.
    Every violation raises ``WireFormatError``: ``bad_dtype`` (a codec not accepted or unknown),
    ``bad_shape``, ``too_large``, ``bad_length``, ``bad_block_size``, ``bad_scales`` (wrong count,
    negative, or scales on a float codec), ``bad_value`` (int8 -128), ``not_finite``.
    """
    if msg.dtype not in limits.dtypes:
        raise WireFormatError("bad_dtype", f"codec {msg.dtype[:32]!r} is not one of {sorted(limits.dtypes)}")
    shape = list(msg.shape)
    _check_shape(shape, expected_shape)
    numel = math.prod(shape)
    if msg.dtype == INT8_BLOCKWISE:
        flat = _unpack_blockwise(msg, shape, numel, limits)
    else:
        flat = _unpack_dense(msg, shape, numel, limits)
    tensor = flat.reshape(shape).to(out_dtype)
    if not bool(torch.isfinite(tensor).all()):
        raise WireFormatError(
            "not_finite", f"tensor of shape {shape} has NaN or infinite values (as {out_dtype})"
        )
    return tensor


def _check_size(shape: list[int], numel: int, nbytes: int, limits: TensorLimits) -> None:
    if numel > limits.max_elements or nbytes > limits.max_bytes:
        raise WireFormatError(
            "too_large",
            f"shape {shape} ({numel} elements, {nbytes} bytes) exceeds the limits "
            f"({limits.max_elements} elements, {limits.max_bytes} bytes)",
        )


def _unpack_dense(msg: pb.Tensor, shape: list[int], numel: int, limits: TensorLimits) -> torch.Tensor:
    """The flat elements of a float-codec message."""
    if msg.scales or msg.block_size:
        raise WireFormatError("bad_scales", f"scales and block_size belong to {INT8_BLOCKWISE}, not "
                                            f"{msg.dtype}")
    dtype = WIRE_DTYPES[msg.dtype]
    nbytes = numel * dtype.itemsize
    _check_size(shape, numel, nbytes, limits)
    if len(msg.data) != nbytes:
        raise WireFormatError(
            "bad_length", f"{len(msg.data)} data bytes; shape {shape} {msg.dtype} needs {nbytes}"
        )
    flat = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8)  # bytearray: owned, writable copy
    if _BIG_ENDIAN:
        flat = _swap_bytes(flat, dtype.itemsize)
    return flat.view(dtype)


def _unpack_blockwise(msg: pb.Tensor, shape: list[int], numel: int, limits: TensorLimits) -> torch.Tensor:
    """The flat float32 values of an int8-blockwise message, every claim checked first."""
    block = msg.block_size
    if not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE:
        raise WireFormatError("bad_block_size", f"block_size {block} is outside "
                                                f"{MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}")
    blocks = num_blocks(numel, block)
    _check_size(shape, numel, numel + blocks * SCALE_BYTES, limits)
    if len(msg.data) != numel:
        raise WireFormatError("bad_length", f"{len(msg.data)} data bytes; shape {shape} "
                                            f"{INT8_BLOCKWISE} needs {numel}")
    if len(msg.scales) != blocks * SCALE_BYTES:
        raise WireFormatError("bad_scales", f"{len(msg.scales)} scale bytes; {numel} elements in blocks "
                                            f"of {block} need {blocks} float32 scales "
                                            f"({blocks * SCALE_BYTES} bytes)")
    scales = scales_from_bytes(msg.scales)
    if not bool(torch.isfinite(scales).all()):
        raise WireFormatError("not_finite", f"{INT8_BLOCKWISE} tensor of shape {shape} has NaN or "
                                            "infinite scales")
    if bool((scales < 0).any()):
        raise WireFormatError("bad_scales", f"{INT8_BLOCKWISE} tensor of shape {shape} has negative scales")
    q = torch.frombuffer(bytearray(msg.data), dtype=torch.int8)
    if bool((q == -128).any()):
        raise WireFormatError("bad_value", f"{INT8_BLOCKWISE} values are -127..127; -128 is not sent")
    return dequantize(q, scales, block)


INT64 = "int64"


def encode_int64(tensor: torch.Tensor) -> pb.Tensor:
    """Pack an int64 tensor (e.g. secure aggregation's masked fixed-point values) as little-endian bytes."""
    if tensor.dtype != torch.int64:
        raise ValueError(f"expected an int64 tensor, got {tensor.dtype}")
    if not 1 <= tensor.dim() <= MAX_RANK or tensor.numel() == 0:
        raise ValueError(f"cannot send a tensor of shape {tuple(tensor.shape)}: need rank 1..{MAX_RANK}")
    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    if _BIG_ENDIAN:
        flat = _swap_bytes(flat, 8)
    return pb.Tensor(dtype=INT64, shape=tensor.shape, data=flat.numpy().tobytes())


def decode_int64(msg: pb.Tensor, max_elements: int,
                 expected_shape: tuple[int | None, ...] | None = None) -> torch.Tensor:
    """Validate and unpack an ``encode_int64`` tensor; every violation raises ``WireFormatError``."""
    if msg.dtype != INT64:
        raise WireFormatError("bad_dtype", f"dtype {msg.dtype[:32]!r} is not {INT64!r}")
    shape = list(msg.shape)
    _check_shape(shape, expected_shape)
    numel = math.prod(shape)
    if numel > max_elements:
        raise WireFormatError("too_large", f"shape {shape} has more than {max_elements} elements")
    if len(msg.data) != numel * 8:
        raise WireFormatError("bad_length", f"{len(msg.data)} data bytes; shape {shape} int64 needs "
                                            f"{numel * 8}")
    flat = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8)
    if _BIG_ENDIAN:
        flat = _swap_bytes(flat, 8)
    return flat.view(torch.int64).reshape(shape)


def lengths_to_mask(
    lengths: pb.Lengths,
    seq_len: int,
    *,
    batch_size: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> torch.Tensor:
    """Rebuild the left-padded 0/1 attention mask, shape (batch, past_length + seq_len), int64.

    ``seq_len`` is the sequence dimension of the hidden states the lengths came with; ``batch_size``,
    when given, is the batch those hidden states have. Inconsistent or oversized claims raise
    ``WireFormatError`` (``bad_lengths`` / ``too_large``) before the mask is allocated.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    rows, pads = list(lengths.lengths), list(lengths.left_padding)
    if len(rows) != len(pads):
        raise WireFormatError("bad_lengths", f"{len(rows)} lengths but {len(pads)} left_padding entries")
    if batch_size is not None and len(rows) != batch_size:
        raise WireFormatError("bad_lengths", f"{len(rows)} rows of lengths for a batch of {batch_size}")
    if not rows:
        raise WireFormatError("bad_lengths", "empty batch")
    if lengths.past_length < 0:
        raise WireFormatError("bad_lengths", f"negative past_length {lengths.past_length}")
    total = lengths.past_length + seq_len
    if len(rows) > max_batch or total > max_length:
        raise WireFormatError(
            "too_large", f"batch {len(rows)} x length {total} exceeds the limits ({max_batch} x {max_length})"
        )
    for row, (length, pad) in enumerate(zip(rows, pads, strict=True)):
        if not 0 <= length <= total or pad + length != total:
            raise WireFormatError(
                "bad_lengths",
                f"row {row}: length {length} + left_padding {pad} does not fill {total} positions",
            )
    starts = torch.tensor(pads, dtype=torch.int64).unsqueeze(1)
    return (torch.arange(total, dtype=torch.int64).unsqueeze(0) >= starts).to(torch.int64)


def mask_to_lengths(mask: torch.Tensor, past_length: int = 0) -> pb.Lengths:
    """Compress a left-padded 0/1 mask of shape (batch, past_length + seq_len) to ``pb.Lengths``.

    Raises ``WireFormatError("bad_mask", ...)`` (a ``ValueError``) if the mask is not 2-D, not 0/1, or
    not left-padded (zeros, then ones, in every row).
    """
    if mask.dim() != 2 or mask.shape[0] < 1 or mask.shape[1] <= past_length or past_length < 0:
        raise WireFormatError(
            "bad_mask",
            f"mask of shape {tuple(mask.shape)} cannot cover past_length {past_length} plus new tokens",
        )
    values = mask.detach().cpu().to(torch.int64)
    if not bool(((values == 0) | (values == 1)).all()):
        raise WireFormatError("bad_mask", "mask values must be 0 or 1")
    if bool((values[:, 1:] < values[:, :-1]).any()):
        raise WireFormatError("bad_mask", "mask is not left-padded (a 1 is followed by a 0)")
    counts = values.sum(dim=1)
    return pb.Lengths(
        lengths=counts.tolist(), left_padding=(mask.shape[1] - counts).tolist(), past_length=past_length
    )
