"""Per-token clipping bounds every norm; the noise has the configured standard deviation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splitfed.privacy import ClippedGaussian, clip_per_token


@given(clip=st.floats(0.01, 100.0), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_clipping_bounds_every_token_and_keeps_small_ones(clip, scale, seed):
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    clipped = clip_per_token(x, clip)
    norms, before = clipped.norm(dim=-1), x.norm(dim=-1)
    assert torch.all(norms <= clip * (1 + 1e-9))
    small = before <= clip
    assert torch.allclose(clipped[small], x[small])  # vectors already inside the ball are untouched
    big = ~small
    assert torch.allclose(norms[big], torch.full_like(norms[big], clip))
    cosine = torch.nn.functional.cosine_similarity(clipped, x, dim=-1)
    assert torch.allclose(cosine, torch.ones_like(cosine))  # direction kept


def test_zero_vectors_survive_clipping():
    assert torch.equal(clip_per_token(torch.zeros(2, 3, 4), 1.0), torch.zeros(2, 3, 4))


@pytest.mark.parametrize(("clip", "sigma"), [(1.0, 0.5), (3.0, 2.0), (0.2, 10.0)])
def test_noise_has_the_configured_standard_deviation(clip, sigma):
    mechanism = ClippedGaussian(clip, sigma, torch.Generator().manual_seed(1))
    x = torch.randn(64, 32, 128) * 10
    noise = mechanism(x) - clip_per_token(x, clip)
    n = noise.numel()
    expected = sigma * clip
    # the sample std of n Gaussians has relative standard error ~ 1/sqrt(2n) (~0.0014 here)
    assert abs(float(noise.std()) / expected - 1) < 0.01
    assert abs(float(noise.mean())) < 5 * expected / n**0.5
    # independent across coordinates and tokens
    flat = noise.reshape(-1, 128)
    correlation = torch.corrcoef(flat[:, :8].T)
    assert float((correlation - torch.eye(8)).abs().max()) < 0.1  # 2048 rows: standard error ~0.022


def test_sigma_zero_clips_only_and_input_is_not_modified():
    x = torch.randn(2, 5, 8) * 100
    original = x.clone()
    out = ClippedGaussian(1.0, 0.0, torch.Generator().manual_seed(0))(x)
    assert torch.equal(x, original)
    assert torch.allclose(out, clip_per_token(original, 1.0))


@pytest.mark.parametrize(("clip", "sigma"), [(0.0, 1.0), (-1.0, 1.0), (1.0, -0.1)])
def test_bad_parameters_are_refused(clip, sigma):
    with pytest.raises(ValueError):
        ClippedGaussian(clip, sigma, torch.Generator())
