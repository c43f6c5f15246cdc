"""A sub-server's tensor work runs on its one compute thread, whichever request thread asks."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from splitfed.server.compute import ComputeThread, single_threaded_torch, use_torch_threads


def test_calls_from_many_threads_all_run_on_the_one_compute_thread_in_turn():
    compute = ComputeThread("test-compute")
    seen: list[str] = []
    inside = threading.Lock()

    def work(value: int) -> int:
        assert inside.acquire(blocking=False), "two calls ran at once"
        try:
            seen.append(threading.current_thread().name)
            return value * 2
        finally:
            inside.release()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda v: compute.run(work, v), range(40)))
    compute.close()
    assert results == [2 * v for v in range(40)]
    assert set(seen) == {"test-compute"}


def test_the_caller_gets_the_exception_and_the_thread_keeps_serving():
    compute = ComputeThread()

    def fail() -> None:
        raise ValueError("bad shape")

    with pytest.raises(ValueError, match="bad shape"):
        compute.run(fail)
    assert compute.run(lambda: 7) == 7
    compute.close()
    with pytest.raises(RuntimeError, match="closed"):
        compute.run(lambda: 1)


def test_a_call_made_on_the_compute_thread_runs_inline_instead_of_deadlocking():
    compute = ComputeThread()
    assert compute.run(lambda: compute.run(lambda: "nested")) == "nested"
    compute.close()


def test_grad_mode_and_autograd_work_across_the_handoff():
    compute = ComputeThread()
    weight = torch.ones(3, requires_grad=True)
    output = compute.run(lambda: (weight * 2).sum())  # graph built on the compute thread
    assert output.requires_grad
    compute.run(output.backward)
    assert torch.equal(weight.grad, torch.full((3,), 2.0))
    compute.close()


def test_each_thread_keeps_the_torch_thread_count_it_set_whatever_others_set_later():
    default = torch.get_num_threads()
    compute = ComputeThread(threads=default)
    counts: dict[str, int] = {}

    def request_thread() -> None:  # as the server's request threads start
        single_threaded_torch()
        counts["request"] = torch.get_num_threads()

    worker = threading.Thread(target=request_thread)
    worker.start()
    worker.join()
    counts["compute"] = compute.run(torch.get_num_threads)  # started before, must keep its count
    late = ComputeThread(threads=default)  # started after the request thread lowered the default
    counts["late"] = late.run(torch.get_num_threads)
    compute.close()
    late.close()
    use_torch_threads(default)  # this test thread's count as it was
    assert counts == {"request": 1, "compute": default, "late": default}
