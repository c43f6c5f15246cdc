"""Fair use of the trunk: deadlines follow the measured step time; held steps slow, then suspend."""

from __future__ import annotations

import pytest

from splitfed.server.fair_use import FairUse, FairUseLimits
from splitfed.transport.errors import ServiceError


class Clock:
    """A settable monotonic clock; ``sleep`` advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _fair(**overrides) -> tuple[FairUse, Clock]:
    clock = Clock()
    limits = FairUseLimits(**{"floor_s": 1.0, "factor": 10.0, "cap_s": 60.0, "suspend_after": 3,
                              "window_s": 600.0, "suspension_s": 900.0, **overrides})
    return FairUse(limits, clock), clock


def test_the_deadline_follows_the_measured_step_time_between_floor_and_cap():
    fair, _ = _fair()
    assert fair.deadline_s() == 60.0  # nothing measured yet: the cap
    for _ in range(5):
        fair.completed("alice", 0.02)
    assert fair.deadline_s() == 1.0  # 10 x 20 ms is under the floor
    for _ in range(6):
        fair.completed("alice", 0.5)
    assert fair.deadline_s() == pytest.approx(10 * 0.5)  # most of alice's steps now take 0.5 s
    for _ in range(16):
        fair.completed("alice", 30.0)
    assert fair.deadline_s() == 60.0  # capped by step_timeout_s


def test_one_slow_client_cannot_stretch_the_others_deadline():
    fair, _ = _fair()
    for _ in range(8):
        fair.completed("alice", 0.3)
        fair.completed("mallory", 5.0)  # answers just before its deadline, every time
    assert fair.deadline_s() == pytest.approx(3.0)  # one client, one vote: the lower middle one


def test_held_steps_slow_the_client_then_suspend_it_and_only_it():
    fair, clock = _fair()
    fair.admit_training("mallory", 30.0, clock.sleep)
    assert clock.slept == []  # no held step yet: no wait
    assert fair.held("mallory", 1.0) == 1
    fair.admit_training("mallory", 30.0, clock.sleep)
    assert clock.slept == [pytest.approx(4.0)]  # 4 deadlines after the drop
    fair.admit_training("alice", 30.0, clock.sleep)
    assert len(clock.slept) == 1  # the others do not wait
    fair.held("mallory", 1.0)
    with pytest.raises(ServiceError) as caught:  # 16 s to wait, more than it may: busy, retry
        fair.admit_training("mallory", 10.0, clock.sleep)
    assert caught.value.status == "UNAVAILABLE" and caught.value.code == "busy"
    fair.held("mallory", 1.0)
    with pytest.raises(ServiceError) as caught:
        fair.admit_training("mallory", 30.0, clock.sleep)
    assert caught.value.status == "PERMISSION_DENIED" and caught.value.code == "suspended"
    status = fair.status()
    assert status["suspended"] == {"mallory": pytest.approx(900.0)}
    fair.admit_training("alice", 30.0, clock.sleep)
    clock.now += 901
    fair.admit_training("mallory", 30.0, clock.sleep)  # the suspension ended
    assert fair.status()["suspended"] == {}


def test_held_steps_outside_the_window_are_forgotten():
    fair, clock = _fair(window_s=60.0)
    fair.held("bob", 1.0)
    fair.held("bob", 1.0)
    clock.now += 61
    assert fair.held("bob", 1.0) == 1
    assert fair.status()["held_steps"] == {"bob": 1}
