"""The clipped Gaussian mechanism applied per token to what a client sends to the server."""

from __future__ import annotations

import torch


def clip_per_token(x: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale every vector along the last dimension down to L2 norm at most ``clip`` (never up)."""
    if clip <= 0:
        raise ValueError(f"clip norm must be > 0, got {clip}")
    norms = x.norm(dim=-1, keepdim=True)
    factor = torch.clamp(clip / norms.clamp_min(torch.finfo(x.dtype).tiny), max=1.0)
    return x * factor


class ClippedGaussian:
    """``x -> clip_per_token(x, C) + N(0, (sigma * C)^2)``, elementwise independent noise.

    ``sigma`` is the noise multiplier (noise std in units of the clip norm); 0 clips only.
    """

    def __init__(self, clip: float, sigma: float, generator: torch.Generator) -> None:
        if clip <= 0:
            raise ValueError(f"clip norm must be > 0, got {clip}")
        if sigma < 0:
            raise ValueError(f"noise multiplier must be >= 0, got {sigma}")
        self.clip = float(clip)
        self.sigma = float(sigma)
        self.generator = generator

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        clipped = clip_per_token(x.detach().float(), self.clip)
        if self.sigma > 0:
            noise = torch.randn(clipped.shape, generator=self.generator, dtype=clipped.dtype)
            clipped = clipped + noise.to(clipped.device) * (self.sigma * self.clip)
        return clipped.to(x.dtype)
