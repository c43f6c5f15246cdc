"""Draining before a checkpoint: a training step whose forward began before the drain is waited for, so the
checkpoint holds every step a client saw complete; a step that starts after it is refused."""

from __future__ import annotations

import threading

import pytest

from splitfed.transport.errors import RemoteError
from tests.conftest import make_batch
from tests.network.test_refusals import Lab


@pytest.fixture
def lab():
    lab = Lab()
    yield lab
    lab.server.stop(0)


def test_drain_waits_for_a_step_whose_forward_is_computing(lab, monkeypatch):
    trunk = lab.service.sub_servers[0]
    entered, release = threading.Event(), threading.Event()
    plain_forward = trunk.forward

    def slow_forward(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return plain_forward(*args, **kwargs)

    monkeypatch.setattr(trunk, "forward", slow_forward)
    client = lab.honest_client()
    batch = make_batch(batch=2, length=6)
    losses: list[float] = []
    stepping = threading.Thread(target=lambda: losses.append(client.train_step(batch)))
    stepping.start()
    assert entered.wait(30)
    drained: list[bool] = []
    draining = threading.Thread(target=lambda: drained.append(lab.service.drain(timeout_s=30)))
    draining.start()
    draining.join(0.5)
    assert draining.is_alive(), "drain returned while a step was inside its forward"
    release.set()
    stepping.join(30)
    draining.join(30)
    assert drained == [True] and len(losses) == 1
    assert lab.service.progress == {"alice": 1} and lab.service.steps == 1

    with pytest.raises(RemoteError) as refused:
        client.train_step(batch)
    assert refused.value.status == "UNAVAILABLE" and "stopping" in refused.value.message
    assert lab.service.steps == 1
