"""Trainable transforms at the cut: a per-token information bottleneck (or a deterministic code),
the local bypass to the tail, and the distance correlation that NoPeek minimises."""

from __future__ import annotations

import math

import torch
from torch import nn


class CutTransform(nn.Module):
    """``h (..., H) -> sent (..., H)`` through a ``width``-dimensional code per token.

    Each coordinate of ``h`` is standardised with the public text's mean and std (buffers set by
    :meth:`calibrate`), so the code's prior N(0, I) fits it. The encoder gives the code's mean (and,
    when ``stochastic``, its log scale); the decoder maps a code back to the hidden size and the
    standardisation is undone. At initialisation the transform is the identity (``width == H``) or an
    orthogonal projection and its transpose, with scale ``initial_scale``.
    """

    def __init__(self, hidden: int, width: int, stochastic: bool, initial_scale: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        if width > hidden:
            raise ValueError(f"a code of {width} dimensions is wider than the model's hidden size {hidden}")
        self.stochastic = stochastic
        generator = torch.Generator().manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(hidden, hidden, generator=generator))[0][:width] \
            if width < hidden else torch.eye(hidden)
        self.encode = nn.Linear(hidden, width)
        self.decode = nn.Linear(width, hidden)
        with torch.no_grad():
            self.encode.weight.copy_(basis)
            self.encode.bias.zero_()
            self.decode.weight.copy_(basis.T)
            self.decode.bias.zero_()
        self.log_scale: nn.Linear | None = None
        if stochastic:
            self.log_scale = nn.Linear(hidden, width)
            with torch.no_grad():
                self.log_scale.weight.zero_()
                self.log_scale.bias.fill_(math.log(initial_scale))
        self.register_buffer("mean", torch.zeros(hidden))
        self.register_buffer("std", torch.ones(hidden))

    @torch.no_grad()
    def calibrate(self, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        """Set the standardisation from public head outputs (the real tokens of ``hidden``)."""
        vectors = hidden[mask.bool()].float()
        self.mean.copy_(vectors.mean(0))
        self.std.copy_(vectors.std(0).clamp_min(1e-6))

    def standardise(self, h: torch.Tensor) -> torch.Tensor:
        return (h.float() - self.mean) / self.std

    def forward(self, h: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sent, kl)``: what crosses the wire, and per token the KL divergence (nats per code
        dimension) of the code's distribution from N(0, I) (None when deterministic)."""
        x = self.standardise(h)
        mean = self.encode(x)
        kl = None
        code = mean
        if self.log_scale is not None:
            log_scale = self.log_scale(x).clamp(-12.0, 4.0)
            scale = log_scale.exp()
            if sample:
                noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
                code = mean + scale * noise
            kl = 0.5 * (mean.pow(2) + scale.pow(2) - 1.0 - 2.0 * log_scale).mean(-1)
        sent = self.decode(code) * self.std + self.mean
        return sent.to(h.dtype), kl


class Bypass(nn.Module):
    """A local low-rank path from the clean (standardised) head output to the tail's input; zero at
    initialisation, so the model starts as without it."""

    def __init__(self, hidden: int, rank: int, seed: int = 0) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden, bias=False)
        generator = torch.Generator().manual_seed(seed)  # not the global RNG: every process inits alike
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.up.weight)

    def forward(self, standardised: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(standardised))


def _centred_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation (Szekely et al.) between the rows of ``x`` (n, p) and ``y`` (n, q):
    0 for independent samples, 1 for an exact similarity transform; differentiable."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"distance correlation needs the same n >= 2 rows, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    a, b = _centred_distances(x.float()), _centred_distances(y.float())
    dcov_xy = (a * b).mean()
    dcov_xx, dcov_yy = (a * a).mean(), (b * b).mean()
    return (dcov_xy.clamp_min(0) / (dcov_xx * dcov_yy).sqrt().clamp_min(1e-12)).sqrt()
