"""Fixed-point encoding of float tensors as int64 ring elements (mod 2**64) for secure aggregation."""

from __future__ import annotations

import math

import torch

from splitfed.security.errors import SecAggError

DEFAULT_SCALE = 2**24
RANGE_LIMIT = 2.0**63


def check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) \
            or scale <= 0:
        raise SecAggError("scale must be a positive finite number")
    return float(scale)


def encode(x: torch.Tensor, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """round(x * scale) as int64 ring elements (mod 2**64); `SecAggError` if not finite or out of range."""
    scale = check_scale(scale)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise SecAggError("encode expects a floating-point tensor")
    scaled = torch.round(x.detach().cpu().to(torch.float64) * scale)
    if scaled.numel() and not bool(torch.isfinite(scaled).all()):
        raise SecAggError("cannot encode NaN or infinite values")
    if scaled.numel() and float(scaled.abs().max()) >= RANGE_LIMIT:
        raise SecAggError(f"value out of the fixed-point range (|x| < 2**63 / scale = "
                          f"{RANGE_LIMIT / scale:.3g})")
    return scaled.to(torch.int64)


def decode(total: torch.Tensor, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """Float64 value of an int64 ring element (read as signed) at fixed-point `scale`."""
    scale = check_scale(scale)
    if not isinstance(total, torch.Tensor) or total.dtype != torch.int64:
        raise SecAggError("decode expects an int64 tensor")
    return total.to(torch.float64) / scale


# ------------------------------------------------------------------------------------------------- shamir
