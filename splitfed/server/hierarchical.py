"""Server-hierarchical training: K sub-servers over one shared frozen base, FedAvg every R steps.

Each sub-server has its own trunk adapter and optimizer (FedSEA-LLaMA copies the whole middle model
per sub-server; here only the adapter is copied) and serves its own clients, in parallel threads on
CPU. Every ``average_every`` steps the sub-servers' adapters are averaged, weighted by the samples
each trained on since the last average, and the average is loaded into all of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from splitfed.models import TrunkPart, adapter_state, load_adapter_state
from splitfed.server.local_trunk import LocalTrunk
from splitfed.training.fedavg import weighted_average
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate_frozen

log = logging.getLogger(__name__)

ClientStep = Callable[[LocalTrunk], int]
"""One client step against a sub-server's trunk; returns the number of samples it trained on."""


class HierarchicalTrunk:
    """``sub_servers`` trunks sharing ``trunk``'s frozen base, each with its own adapter copy."""

    def __init__(self, trunk: TrunkPart, sub_servers: int, average_every: int,
                 optimizer: OptimizerSettings | None = None) -> None:
        if sub_servers < 1 or average_every < 1:
            raise ValueError("need at least one sub-server and average_every >= 1")
        parts = [trunk] + [replicate_frozen(trunk) for _ in range(sub_servers - 1)]
        self.subs = [LocalTrunk(part, optimizer) for part in parts]
        self.average_every = average_every
        self.averages = 0

    def run(self, steps_by_sub: Sequence[Sequence[ClientStep]], rounds: int) -> None:
        """For ``rounds`` rounds: every sub-server runs its clients' steps (``average_every`` passes
        over its list of client steps) in its own thread, then the adapters are averaged."""
        if len(steps_by_sub) != len(self.subs):
            raise ValueError(f"{len(self.subs)} sub-servers but {len(steps_by_sub)} client lists")
        for _ in range(rounds):
            self.average(self._parallel_round(steps_by_sub))

    def _parallel_round(self, steps_by_sub: Sequence[Sequence[ClientStep]]) -> list[int]:
        samples = [0] * len(self.subs)
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                for _ in range(self.average_every):
                    for step in steps_by_sub[index]:
                        samples[index] += step(self.subs[index])
            except BaseException as error:  # reported on the caller's thread
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,), name=f"sub-server-{i}")
                   for i in range(len(self.subs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return samples

    def average(self, samples: Sequence[int]) -> None:
        """FedAvg of the sub-servers' trunk adapters, weighted by ``samples``, loaded into all."""
        active = [(sub, n) for sub, n in zip(self.subs, samples, strict=True) if n > 0]
        if not active:
            return
        average = weighted_average([adapter_state(sub.trunk) for sub, _ in active], [n for _, n in active])
        for sub in self.subs:
            load_adapter_state(sub.trunk, average)
        self.averages += 1
        log.info("averaged the trunk adapters of %d sub-server(s), weights %s", len(active), list(samples))
