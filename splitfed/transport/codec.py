"""Tensors and attention lengths <-> protobuf messages, checking every claim before allocating."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from splitfed.transport import splitfed_pb2 as pb
from splitfed.transport.errors import WireFormatError

WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
MAX_RANK = 8
DEFAULT_MAX_BATCH = 4096
DEFAULT_MAX_LENGTH = 1 << 16
ADAPTER_ELEMENTS = 1 << 26  # the largest adapter tensor a FedAvg round carries, each way
ADAPTER_BYTES = 1 << 28

_BIG_ENDIAN = sys.byteorder == "big"


@dataclass(frozen=True)
class TensorLimits:
    """What a receiver accepts: wire dtypes, and caps on element count and byte size."""

    dtypes: frozenset[str]
    max_elements: int
    max_bytes: int

    def __post_init__(self) -> None:
        unknown = set(self.dtypes) - WIRE_DTYPES.keys()
        if unknown:
            raise ValueError(f"unknown wire dtypes {sorted(unknown)}; known: {sorted(WIRE_DTYPES)}")
        if self.max_elements < 1 or self.max_bytes < 1:
            raise ValueError("max_elements and max_bytes must be positive")


def adapter_limits(dtypes: frozenset[str] = frozenset({"float32"})) -> TensorLimits:
    """What an adapter tensor of a FedAvg round may be (both sides)."""
    return TensorLimits(dtypes=dtypes, max_elements=ADAPTER_ELEMENTS, max_bytes=ADAPTER_BYTES)


def _swap_bytes(flat_bytes: torch.Tensor, itemsize: int) -> torch.Tensor:
    """Reverse the byte order of each element of a flat uint8 tensor (big-endian hosts only)."""
    return flat_bytes.view(-1, itemsize).flip(-1).reshape(-1)


def encode_tensor(tensor: torch.Tensor, wire_dtype: str = "float32") -> pb.Tensor:
    """Cast ``tensor`` to ``wire_dtype`` and pack it as C-contiguous little-endian bytes.

    Values outside the wire dtype's range become inf, which the receiver rejects (``not_finite``).
    """
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"unknown wire dtype {wire_dtype!r}; known: {sorted(WIRE_DTYPES)}")
    if not 1 <= tensor.dim() <= MAX_RANK or tensor.numel() == 0:
        raise ValueError(
            f"cannot send a tensor of shape {tuple(tensor.shape)}: need rank 1..{MAX_RANK}, no empty dims"
        )
    dtype = WIRE_DTYPES[wire_dtype]
    flat = tensor.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1).view(torch.uint8)
    if _BIG_ENDIAN:
        flat = _swap_bytes(flat, dtype.itemsize)
    return pb.Tensor(dtype=wire_dtype, shape=tensor.shape, data=flat.numpy().tobytes())


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

    Dtype, shape, size and byte length are checked before anything is allocated; values are checked
    to be finite after the cast to ``out_dtype``. Every violation raises ``WireFormatError``.
    """
    if msg.dtype not in limits.dtypes:
        raise WireFormatError("bad_dtype", f"dtype {msg.dtype[:32]!r} is not one of {sorted(limits.dtypes)}")
    dtype = WIRE_DTYPES[msg.dtype]
    shape = list(msg.shape)
    _check_shape(shape, expected_shape)
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    if numel > limits.max_elements or nbytes > limits.max_bytes:
        raise WireFormatError(
            "too_large",
            f"shape {shape} ({numel} elements, {nbytes} bytes) exceeds the limits "
            f"({limits.max_elements} elements, {limits.max_bytes} bytes)",
        )
    if len(msg.data) != nbytes:
        raise WireFormatError(
            "bad_length", f"{len(msg.data)} data bytes; shape {shape} {msg.dtype} needs {nbytes}"
        )
    flat = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8)  # bytearray: owned, writable copy
    if _BIG_ENDIAN:
        flat = _swap_bytes(flat, dtype.itemsize)
    tensor = flat.view(dtype).reshape(shape).to(out_dtype)
    if not bool(torch.isfinite(tensor).all()):
        raise WireFormatError(
            "not_finite", f"tensor of shape {shape} has NaN or infinite values (as {out_dtype})"
        )
    return tensor


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
