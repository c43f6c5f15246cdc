"""The gradient guard: non-finite refused, oversized clipped (or refused) relative to recent honest
gradients, strikes suspend the client that earns them and no one else."""

from __future__ import annotations

import math

import pytest
import torch

from splitfed.server.gradient_guard import (
    GradientGuard,
    GradientGuardSettings,
    GradientRefused,
    gradient_statistic,
)


def _grad(statistic: float, rows: int = 2, length: int = 8, hidden: int = 16, seed: int = 0) -> torch.Tensor:
    grad = torch.randn(rows, length, hidden, generator=torch.Generator().manual_seed(seed))
    return grad * (statistic / gradient_statistic(grad))


def test_without_settings_only_non_finite_gradients_are_refused():
    guard = GradientGuard()
    assert torch.equal(guard.check("alice", grad := _grad(1e6)), grad)
    with pytest.raises(GradientRefused):
        guard.check("alice", torch.full((2, 3, 4), float("nan")))


def _warmed(settings: GradientGuardSettings, honest: float = 1.0) -> GradientGuard:
    guard = GradientGuard(settings)
    for seed in range(settings.min_samples):
        assert torch.equal(guard.check("alice", grad := _grad(honest, seed=seed)), grad)
    return guard


def test_the_statistic_does_not_depend_on_the_batch_shape_for_a_mean_loss():
    """d(mean over N positions)/dh: each position's share 1/N, so norm x sqrt(N) is the same for any N."""
    values = []
    for rows, length in ((1, 16), (4, 16), (8, 64)):
        hidden = torch.randn(rows, length, 8, requires_grad=True, generator=torch.Generator().manual_seed(0))
        (hidden ** 2).sum(-1).mean().backward()
        values.append(gradient_statistic(hidden.grad) / hidden.detach().norm(dim=-1).mean().item())
    assert max(values) / min(values) < 1.3


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradients_are_refused_and_struck(value):
    guard = GradientGuard(GradientGuardSettings())
    grad = _grad(1.0)
    grad[0, 0, 0] = value
    with pytest.raises(GradientRefused) as refused:
        guard.check("mallory", grad)
    assert refused.value.code == "not_finite"
    assert guard.status()["gradients_refused"] == 1


def test_before_the_warm_up_the_bound_is_warmup_max_and_a_clip_is_no_strike():
    settings = GradientGuardSettings(warmup_max=2.0, strikes_to_suspend=1)
    guard = GradientGuard(settings)
    clipped = guard.check("alice", _grad(3100.0))
    assert gradient_statistic(clipped) == pytest.approx(2.0)
    assert guard.suspended_for("alice") == 0


def test_after_the_warm_up_the_bound_follows_the_median():
    settings = GradientGuardSettings(norm_ratio=5.0, min_samples=4)
    guard = _warmed(settings, honest=0.2)
    assert guard.bound() == pytest.approx(1.0)
    assert torch.equal(guard.check("alice", grad := _grad(0.9)), grad)  # within the bound: untouched
    clipped = guard.check("mallory", _grad(3e10))
    assert gradient_statistic(clipped) == pytest.approx(0.2, rel=0.3)  # scaled to the median
    assert torch.isfinite(clipped).all()


def test_one_client_cannot_drag_the_bound_up():
    settings = GradientGuardSettings(norm_ratio=5.0, min_samples=4, window=64, strikes_to_suspend=1000)
    guard = _warmed(settings, honest=0.2)
    for seed in range(30):  # the attacker sends as often as the honest client
        guard.check("mallory", _grad(1e6, seed=seed))
        guard.check("alice", _grad(0.2, seed=seed))
    assert guard.bound() <= 5.0 * 5.0 * 0.2  # the median may reach the bound, never the attacker's size


def test_refuse_action_refuses_oversized_gradients():
    guard = _warmed(GradientGuardSettings(action="refuse", min_samples=4))
    with pytest.raises(GradientRefused) as refused:
        guard.check("mallory", _grad(100.0))
    assert refused.value.code == "gradient_norm" and "exceeds the bound" in refused.value.message


def test_repeated_strikes_suspend_that_client_only():
    settings = GradientGuardSettings(min_samples=4, strikes_to_suspend=3, strike_window=10, suspend_s=60)
    guard = _warmed(settings)
    for seed in range(3):
        assert guard.suspended_for("mallory") == 0
        guard.check("mallory", _grad(1e4, seed=seed))
    assert 55 < guard.suspended_for("mallory") <= 60
    assert guard.suspended_for("alice") == 0
    assert "mallory" in guard.status()["suspended_for_gradients"]


def test_occasional_honest_outliers_do_not_suspend():
    settings = GradientGuardSettings(min_samples=4, strikes_to_suspend=3, strike_window=10)
    guard = _warmed(settings)
    for step in range(40):
        guard.check("alice", _grad(10.0 if step % 10 == 0 else 1.0, seed=step))
    assert guard.suspended_for("alice") == 0
    assert math.isfinite(guard.bound())
