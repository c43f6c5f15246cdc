"""Shamir t-out-of-n secret sharing of 32-byte secrets over the prime field GF(2**521 - 1)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence

from splitfed.security.errors import SecAggError

PRIME = 2**521 - 1
SHARE_SIZE = 66
SECRET_SIZE = 32


def shamir_split(secret: bytes, threshold: int, xs: Iterable[int]) -> dict[int, int]:
    """Shares of `secret` (<= 65 bytes) at the distinct non-zero points `xs`; any `threshold` rebuild it."""
    if not isinstance(secret, bytes) or len(secret) > SHARE_SIZE - 1:
        raise SecAggError("secret must be at most 65 bytes")
    points = list(xs)
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise SecAggError("share points must be distinct and non-zero")
    if not 1 <= threshold <= len(points):
        raise SecAggError("threshold must be between 1 and the number of shares")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in points:
        value = 0
        for coefficient in reversed(coefficients):
            value = (value * x + coefficient) % PRIME
        shares[x] = value
    return shares


def _interpolate(points: Sequence[tuple[int, int]], at: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator = denominator = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total = (total + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def shamir_combine(shares: Mapping[int, int], threshold: int, size: int = SECRET_SIZE) -> bytes:
    """Rebuild a `size`-byte secret from >= `threshold` shares; surplus shares must agree (`SecAggError`)."""
    points = sorted(shares.items())
    if len(points) < threshold or len({x for x, _ in points}) != len(points):
        raise SecAggError(f"need {threshold} distinct shares, got {len(points)}")
    if any(not 0 < x < PRIME or not 0 <= y < PRIME for x, y in points):
        raise SecAggError("share out of the field")
    base = points[:threshold]
    if any(_interpolate(base, x) != y for x, y in points[threshold:]):
        raise SecAggError("inconsistent shares")
    value = _interpolate(base, 0)
    if value >= 1 << (8 * size):
        raise SecAggError("inconsistent shares")
    return value.to_bytes(size, "big")


# ---------------------------------------------------------------------------------------------------- keys
