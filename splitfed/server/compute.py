"""Where a sub-server's tensor work runs: one dedicated thread, whichever request thread asks.

Every thread that runs torch operations on the CPU gets an OpenMP team of its own. A server whose
many request threads each computed in turn ended up with many teams, more OpenMP threads than cores,
and the OpenMP runtime then stops spin-waiting between operations: every operation of every step
slowed by about a third (measured on 2 cores with SmolLM2: a trunk forward + backward of 8 x 64
tokens took 760 ms on one thread, 1,000 ms once a second thread had computed, even a single
``isfinite`` check). Funnelling a sub-server's work through one thread keeps one team, and serialises
it as the old compute lock did; the request threads run what little tensor work they do (decoding,
validation) single-threaded, which creates no team.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()


class ComputeThread:
    """Runs submitted calls one at a time on one daemon thread; ``run`` blocks until its call is done
    and returns its result (or raises its exception). A call made from that thread itself runs inline,
    so work that nests (an average inside a step) cannot deadlock.

    ``threads``: the torch intra-op threads of this thread's team (default: those of the thread that
    creates it); give each of K parallel sub-servers about cores / K so that together they do not
    oversubscribe the cores.
    """

    def __init__(self, name: str = "trunk-compute", threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.name = name
        self.threads = threads if threads is not None else torch.get_num_threads()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def run(self, function: Callable[..., T], *args, **kwargs) -> T:
        """``function(*args, **kwargs)`` on the compute thread; its result, or its exception."""
        if threading.current_thread() is self._thread:
            return function(*args, **kwargs)
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        future: Future = Future()
        self._calls.put((future, function, args, kwargs))
        return future.result()

    def close(self) -> None:
        """Finish the queued calls and stop the thread (idempotent)."""
        if not self._closed:
            self._closed = True
            self._calls.put(_STOP)
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=60)

    def _loop(self) -> None:
        use_torch_threads(self.threads)
        while True:
            call = self._calls.get()
            if call is _STOP:
                return
            future, function, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - handed to the caller, who raises it
                future.set_exception(error)


def single_threaded_torch() -> None:
    """Make the calling thread run torch operations on itself alone (no OpenMP team of its own): for
    threads that only decode and validate, while the compute threads do the heavy work."""
    use_torch_threads(1)


def use_torch_threads(count: int) -> None:
    """Run the calling thread's torch operations on ``count`` threads, whatever other threads set."""
    # torch sets a thread's count from its process-wide default at the thread's first parallel
    # operation, overriding an earlier set_num_threads; get_num_threads triggers that first, so the
    # explicit count below stays (whatever the other threads set the default to meanwhile).
    torch.get_num_threads()
    torch.set_num_threads(count)
