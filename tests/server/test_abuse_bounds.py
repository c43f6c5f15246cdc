"""Bounds against abuse by enrolled clients: the secure average is checked, turns are shared fairly."""

from __future__ import annotations

import math

import pytest
import torch

from splitfed.aggregation.secure_rounds import SecureRounds
from splitfed.security import SecAggError


def _average(norm: float) -> dict[str, torch.Tensor]:
    return {"a": torch.full((4,), norm / 2.0), "b": torch.zeros(3)}


def test_a_finite_average_within_the_ratio_passes_and_becomes_the_reference():
    rounds = SecureRounds(lambda: set(), max_norm_ratio=2.0)
    rounds._check_average(_average(1.0))
    assert rounds.previous_norm == pytest.approx(1.0)
    rounds._check_average(_average(1.9))
    assert rounds.previous_norm == pytest.approx(1.9)


def test_an_average_that_jumps_past_the_ratio_or_is_not_finite_is_rejected():
    rounds = SecureRounds(lambda: set(), max_norm_ratio=2.0)
    rounds._check_average(_average(1.0))
    with pytest.raises(SecAggError, match="exceeds 2 x the previous"):
        rounds._check_average(_average(2.5))
    assert rounds.previous_norm == pytest.approx(1.0)  # a rejected round does not move the reference
    poisoned = _average(1.0)
    poisoned["b"][1] = math.nan
    with pytest.raises(SecAggError, match="not finite"):
        rounds._check_average(poisoned)
    unbounded = SecureRounds(lambda: set(), max_norm_ratio=None)
    unbounded._check_average(_average(1.0))
    unbounded._check_average(_average(100.0))  # only finiteness without a ratio


def test_a_client_with_many_requests_waiting_gets_at_most_every_other_turn():
    import threading

    from splitfed.server.scheduler import TurnScheduler

    scheduler = TurnScheduler()
    scheduler.acquire("carol", 1)  # carol holds the trunk; 3 requests of mallory's and 1 of alice's wait
    order: list[str] = []
    lock = threading.Lock()

    def take(client: str) -> None:
        scheduler.acquire(client, 10)
        with lock:
            order.append(client)
        scheduler.release(client)

    threads = [threading.Thread(target=take, args=("mallory",)) for _ in range(3)]
    for thread in threads:
        thread.start()
    import time

    time.sleep(0.2)
    alice = threading.Thread(target=take, args=("alice",))
    alice.start()
    time.sleep(0.2)
    scheduler.release("carol")
    for thread in (*threads, alice):
        thread.join(timeout=10)
    assert order[:2] == ["mallory", "alice"], order  # queued after mallory's three, served second
