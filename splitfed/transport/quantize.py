"""Int8 blockwise absmax quantization, the lossy codec of the wire ("int8-blockwise").

The flat tensor is cut into blocks of ``block_size`` elements (the last one may be shorter); a block
travels as int8 values ``q = round(x / absmax * 127)`` in -127..127 and one float32 scale
``absmax / 127``, so element ``x`` comes back as ``q * scale`` within ``absmax / 254`` of itself (plus
float32 rounding). About 1 + 4 / block_size bytes per element: 1.0625 at the default 64, a quarter
of float32. Scales are float32, not float16: every finite float32 block then has an exact-enough
scale, whereas a float16 scale overflows beyond absmax 8.3e6 and loses precision below absmax 7.8e-3
(subnormal; zero below 3.8e-6), which is where gradients live. The two extra bytes per 64 elements
cost 3%.
"""

from __future__ import annotations

import sys

import torch

INT8_BLOCKWISE = "int8-blockwise"
DEFAULT_BLOCK_SIZE = 64
MIN_BLOCK_SIZE = 8
MAX_BLOCK_SIZE = 1 << 16
SCALE_BYTES = 4  # float32

_BIG_ENDIAN = sys.byteorder == "big"


def num_blocks(numel: int, block_size: int) -> int:
    """Blocks (and scales) of a tensor of ``numel`` elements: ceil(numel / block_size)."""
    return -(-numel // block_size)


def _blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """``flat`` zero-padded to whole blocks, shape (blocks, block_size)."""
    pad = num_blocks(flat.numel(), block_size) * block_size - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block_size)


def quantize(tensor: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)``: int8 values (numel) and float32 scales (one per block) of ``tensor``.

    A block holding NaN or inf gets a NaN scale (and zeros): the receiver refuses it as not finite,
    as it refuses an infinite float, rather than the sender failing in the middle of a request.
    """
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be within {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}, got {block_size}")
    flat = tensor.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    blocks = _blocks(flat, block_size)
    finite = torch.isfinite(blocks).all(dim=1)
    absmax = torch.where(finite, blocks.abs().amax(dim=1), torch.zeros(()))
    safe = torch.where(absmax > 0, absmax, torch.ones(()))
    # x / absmax is in [-1, 1] exactly (the largest element gives 1), so q never leaves -127..127
    q = torch.round(torch.where(finite[:, None], blocks, 0.0) / safe[:, None] * 127).clamp_(-127, 127)
    scales = torch.where(finite, absmax / 127, torch.full((), float("nan")))
    return q.to(torch.int8).reshape(-1)[: flat.numel()], scales


def dequantize(q: torch.Tensor, scales: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flat float32 values ``q[i] * scales[i // block_size]`` (``q`` int8, ``scales`` float32)."""
    blocks = _blocks(q.to(torch.float32), block_size)
    return (blocks * scales[:, None]).reshape(-1)[: q.numel()]


def scales_to_bytes(scales: torch.Tensor) -> bytes:
    """Little-endian float32 bytes of the scales."""
    raw = scales.to(torch.float32).contiguous().view(torch.uint8)
    if _BIG_ENDIAN:
        raw = raw.view(-1, SCALE_BYTES).flip(-1).reshape(-1)
    return raw.numpy().tobytes()


def scales_from_bytes(data: bytes) -> torch.Tensor:
    """Float32 scales from little-endian bytes (a multiple of 4 long; the caller checks the count)."""
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if _BIG_ENDIAN:
        raw = raw.view(-1, SCALE_BYTES).flip(-1).reshape(-1)
    return raw.view(torch.float32)


def round_trip(tensor: torch.Tensor, block_size: int) -> torch.Tensor:
    """What the receiver decodes for ``tensor`` (float32, same shape): for error feedback and tests."""
    q, scales = quantize(tensor, block_size)
    return dequantize(q, scales, block_size).reshape(tensor.shape)
