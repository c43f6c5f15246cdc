"""Hierarchical mode in the trunk service: the sub-servers' step counts and the FedAvg of their adapters.

A sub-server that has done ``every`` steps since the last average waits (its next client holding the
turn, so none of its steps is open) until every sub-server with clients has too; then their trunk
adapters are averaged, weighted by the samples each trained on, and loaded into all of them. A
sub-server still short of the steps at the deadline is left out of that average.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from splitfed.aggregation.fedavg import weighted_average
from splitfed.server.sub_server import SubServer

log = logging.getLogger(__name__)


class SubServerAveraging:
    """The step counts of ``subs`` and their periodic average; ``condition`` guards the counts."""

    def __init__(self, subs: Sequence[SubServer], every: int, timeout_s: float) -> None:
        self.subs = list(subs)
        self.every = every
        self.timeout_s = timeout_s
        self.condition = threading.Condition()
        self.averages = 0

    def count_step(self, sub: SubServer, samples: int, also: Callable[[], None]) -> None:
        """Count a finished step of ``sub``, run ``also`` under the same lock, wake the waiters."""
        with self.condition:
            sub.steps_since += 1
            sub.samples_since += samples
            also()
            self.condition.notify_all()

    def notify(self) -> None:
        """Wake the waiters (a sub-server may have lost its last client)."""
        with self.condition:
            self.condition.notify_all()

    def wait_for_average(self, sub: SubServer) -> None:
        """Before a step of ``sub``: if it is due for an average, wait for it (see the module docstring)."""
        if len(self.subs) == 1:
            return
        deadline = time.monotonic() + self.timeout_s
        with self.condition:
            while sub.steps_since >= self.every:
                active = [s for s in self.subs if s.sessions > 0 or s is sub]
                waiting = [s for s in active if s.steps_since >= self.every]
                if len(waiting) == len(active):
                    self._average_locked(waiting)
                elif time.monotonic() > deadline:
                    log.warning("averaging without %d sub-server(s) that missed the deadline",
                                len(active) - len(waiting))
                    self._average_locked(waiting)
                else:
                    self.condition.wait(0.2)

    def average_all(self) -> None:
        """At the end: average every sub-server once more if any trained since the last average."""
        if len(self.subs) > 1:
            with self.condition:
                self._average_locked(self.subs)

    def _average_locked(self, subs: list[SubServer]) -> None:
        contributing = [s for s in subs if s.samples_since > 0]
        if contributing:
            average = weighted_average([s.adapter() for s in contributing],
                                       [s.samples_since for s in contributing])
            for sub in subs:
                sub.load_adapter(average)
            self.averages += 1
            log.info("averaged the trunk adapters of %d sub-server(s) (samples %s)", len(contributing),
                     [s.samples_since for s in contributing])
        for sub in subs:
            sub.steps_since = sub.samples_since = 0
        self.condition.notify_all()
