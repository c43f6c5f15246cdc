"""guarded_step: a poisoned gradient never reaches the parameters or AdamW's state."""

from __future__ import annotations

import pytest
import torch

from splitfed.finite import nonfinite_names
from splitfed.training.guarded_step import guarded_step


def _model_and_optimizer(seed: int = 0) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer


def _honest_step(model, optimizer, seed: int) -> None:
    torch.manual_seed(100 + seed)
    model(torch.randn(5, 4)).pow(2).mean().backward()
    assert guarded_step(optimizer)


def _snapshot(model, optimizer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in model.parameters()]
    for state in optimizer.state.values():
        tensors += [v.clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def _poison(model, value: float) -> None:
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 3e38, 1e30, 1e20])
def test_a_poisoned_gradient_leaves_parameters_and_state_untouched(value):
    model, optimizer = _model_and_optimizer()
    _honest_step(model, optimizer, 0)
    before = _snapshot(model, optimizer)
    _poison(model, value)
    assert not guarded_step(optimizer)
    after = _snapshot(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_a_step_that_would_overflow_is_rolled_back_exactly():
    """A gradient under the element limit whose update still overflows (here SGD with momentum and a
    learning rate that carries the parameters past float32's range)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30, momentum=0.9)
    _poison(model, 1e-3)
    assert guarded_step(optimizer)  # 1e27: finite
    before = _snapshot(model, optimizer)
    _poison(model, 1e12)
    assert not guarded_step(optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(model, optimizer), strict=True))


def test_honest_steps_are_exactly_adamw():
    guarded, guarded_optimizer = _model_and_optimizer()
    plain, plain_optimizer = _model_and_optimizer()
    for seed in range(5):
        _honest_step(guarded, guarded_optimizer, seed)
        torch.manual_seed(100 + seed)
        plain(torch.randn(5, 4)).pow(2).mean().backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad()
    for a, b in zip(guarded.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_goes_on_after_a_dropped_step():
    model, optimizer = _model_and_optimizer()
    _honest_step(model, optimizer, 0)
    _poison(model, float("nan"))
    assert not guarded_step(optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    _honest_step(model, optimizer, 1)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_nonfinite_names():
    tensors = {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]), "c": torch.tensor([1, 2])}
    assert nonfinite_names(tensors) == ["b"]
