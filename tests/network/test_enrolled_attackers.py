"""Enrolled attackers against a live trunk server on 127.0.0.1, each with an honest client training:
a poisoned backward (3e38, 1e30, or finite and 1e4 x an honest one) cannot poison the trunk, stop the
honest client, or make anything non-finite that is saved. Every loop is bounded."""

from __future__ import annotations

import pytest
import torch

from splitfed.models import adapter_state, save_adapter
from splitfed.server.gradient_guard import GradientGuardSettings
from splitfed.transport import encode_tensor, pb
from splitfed.transport.errors import RemoteError
from tests.conftest import make_batch
from tests.network.test_refusals import HIDDEN, Lab, _forward, _send

HONEST_STEPS = 6  # before the attack
AFTER = 30  # honest steps after it; the trunk's learning is measured over the last LEARNING of them
LEARNING = 15


def _poison(kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    if kind == "norm-1e5":  # ~1e4 x the honest client's gradient norm here (about 10)
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(7))
        return grad * (1e5 / grad.norm())
    return torch.full(shape, float(kind))


def _run(attack: str | None) -> tuple[list[float], Lab, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The honest client's losses, the lab, and the trunk adapter before the last LEARNING steps and at
    the end."""
    lab = Lab(gradient_guard=GradientGuardSettings())  # as `splitfed serve` runs it
    try:
        honest = lab.honest_client()
        losses = [honest.train_step(make_batch(batch=2, length=10, seed=step))
                  for step in range(HONEST_STEPS)]
        if attack is not None:
            connection, channel = lab.session(lab.people["mallory"])
            _send(connection, channel, "forward", 1, _forward(1, encode_tensor(torch.randn(2, 5, HIDDEN))))
            grad = pb.BackwardRequest(step=1, grad=encode_tensor(_poison(attack, (2, 5, HIDDEN))))
            try:
                _send(connection, channel, "backward", 1, grad)
            except RemoteError as error:  # refused (non-finite) or served clipped: the trunk must hold
                assert error.status == "INVALID_ARGUMENT" and "not_finite" in error.message
        losses += [honest.train_step(make_batch(batch=2, length=10, seed=HONEST_STEPS + step))
                   for step in range(AFTER - LEARNING)]
        after_attack = {k: v.clone() for k, v in adapter_state(lab.service.mode.part).items()}
        losses += [honest.train_step(make_batch(batch=2, length=10, seed=HONEST_STEPS + step))
                   for step in range(AFTER - LEARNING, AFTER)]
        final = {k: v.clone() for k, v in adapter_state(lab.service.mode.part).items()}
        return losses, lab, after_attack, final
    finally:
        lab.server.stop(0)


def _moved(after_attack: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> float:
    return sum(float((final[k] - after_attack[k]).norm()) for k in final if "lora_B" in k)


@pytest.fixture(scope="module")
def unattacked() -> tuple[list[float], float]:
    losses, _, after_attack, final = _run(None)
    return losses, _moved(after_attack, final)


@pytest.mark.parametrize("attack", ["3e38", "1e30", "norm-1e5"])
def test_a_poisoned_backward_does_not_reach_the_trunk(attack, unattacked, tmp_path):
    losses, lab, after_attack, final = _run(attack)
    assert len(losses) == HONEST_STEPS + AFTER and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(t).all() for t in final.values())
    for state in lab.service.mode.trunk.optimizer.state.values():
        assert all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor))
    unattacked_losses, unattacked_moved = unattacked
    # the trunk adapter keeps learning from the honest client (AdamW's second moment, inflated by an
    # unbounded gradient, would have divided its steps by ~300)
    assert _moved(after_attack, final) >= 0.5 * unattacked_moved
    assert abs(losses[-1] - unattacked_losses[-1]) <= 0.02 * abs(unattacked_losses[-1])
    saved = save_adapter(lab.service.mode.part, tmp_path / "trunk")  # refuses anything non-finite
    assert saved.is_dir()
