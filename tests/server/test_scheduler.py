"""The trunk scheduler: one step at a time, round-robin with a roster, FIFO without."""

from __future__ import annotations

import threading
import time

import pytest

from splitfed.server.scheduler import TurnScheduler, TurnTimeout


def _run_clients(scheduler: TurnScheduler, clients: list[str], steps: int, delays: dict[str, float]):
    order: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        scheduler.join(name)
        for _ in range(steps):
            time.sleep(delays.get(name, 0.0))
            scheduler.acquire(name, timeout_s=10)
            with lock:
                order.append(name)
            time.sleep(0.002)
            scheduler.release(name)
        scheduler.leave(name)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return order


def test_roster_gives_round_robin_turns_whatever_the_timing():
    scheduler = TurnScheduler(roster=["a", "b", "c"])
    order = _run_clients(scheduler, ["c", "b", "a"], steps=4, delays={"a": 0.01, "b": 0.0, "c": 0.005})
    assert order == ["a", "b", "c"] * 4


def test_a_client_that_leaves_is_skipped():
    scheduler = TurnScheduler(roster=["a", "b"])
    scheduler.join("a")
    scheduler.join("b")
    scheduler.leave("a")
    scheduler.acquire("b", timeout_s=1)
    scheduler.release("b")
    scheduler.acquire("b", timeout_s=1)
    assert scheduler.holder == "b"


def test_without_roster_one_step_at_a_time_in_arrival_order():
    scheduler = TurnScheduler()
    scheduler.acquire("x", timeout_s=1)
    got: list[str] = []
    waiter = threading.Thread(target=lambda: (scheduler.acquire("y", timeout_s=5), got.append("y")))
    waiter.start()
    time.sleep(0.1)
    assert got == [] and scheduler.holder == "x"
    scheduler.release("x")
    waiter.join(5)
    assert got == ["y"] and scheduler.holder == "y"


def test_waiting_too_long_times_out_and_leaving_frees_the_turn():
    scheduler = TurnScheduler()
    scheduler.acquire("x", timeout_s=1)
    with pytest.raises(TurnTimeout):
        scheduler.acquire("y", timeout_s=0.2)
    scheduler.leave("x")
    scheduler.acquire("y", timeout_s=1)
    assert scheduler.holder == "y"


def test_roster_waits_for_everyone_until_the_start_timeout():
    scheduler = TurnScheduler(roster=["a", "b"], start_timeout_s=0.3)
    scheduler.join("b")
    started = time.monotonic()
    scheduler.acquire("b", timeout_s=2)  # a never joins: b may start once the start timeout passes
    assert time.monotonic() - started >= 0.25
