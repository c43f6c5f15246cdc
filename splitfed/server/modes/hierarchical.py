"""Hierarchical mode: K sub-servers, each a trunk adapter with its own optimizer, serve their clients in
parallel and average their adapters (weighted by samples) every ``average_every`` steps. Clients are
spread over the sub-servers by roster position, else arrival order.

Backends: ``threads`` (default) runs the sub-servers in this process over **one** frozen base, each on
its own compute thread; ``ray`` runs each in a Ray actor with its own base and resources
(``splitfed.server.ray_backend``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from splitfed.server.compute import ComputeThread
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.modes.base import StepBook, SubServerMode
from splitfed.server.scheduler import TurnScheduler
from splitfed.server.service_parts import ServiceLimits, Session
from splitfed.server.sub_averaging import SubServerAveraging
from splitfed.server.sub_server import InProcessSubServer, SubServer
from splitfed.training.replicate import replicate_frozen

if TYPE_CHECKING:
    from splitfed.models import SplitModel
    from splitfed.server.settings import ServerSettings

log = logging.getLogger(__name__)


class HierarchicalMode(SubServerMode):
    """``trunks``: one per sub-server, sharing their frozen base (see ``replicate_frozen``)."""

    name = "hierarchical"

    def __init__(self, trunks: Sequence[LocalTrunk | SubServer], average_every: int = 1,
                 roster: list[str] | None = None) -> None:
        """``trunks``: local trunks (each becomes an in-process sub-server) or ready sub-servers."""
        if not trunks or average_every < 1:
            raise ValueError("hierarchical mode needs at least one sub-server and average_every >= 1")
        # parallel sub-servers share the cores: each computes on its part of the torch threads
        threads = max(1, torch.get_num_threads() // len(trunks))
        rosters = roster_slices(roster, len(trunks))
        subs = [InProcessSubServer(trunk, TurnScheduler(rosters[k]),
                                   ComputeThread(f"trunk-compute-{k}", threads))
                if isinstance(trunk, LocalTrunk) else trunk
                for k, trunk in enumerate(trunks)]
        super().__init__(subs, TurnScheduler(roster), roster)
        self.average_every = average_every
        self.averaging = SubServerAveraging(self.subs, average_every, self.limits.turn_timeout_s)

    def start(self, book: StepBook, limits: ServiceLimits) -> None:
        super().start(book, limits)
        self.averaging.timeout_s = limits.turn_timeout_s

    def leave(self, session: Session, finished: bool) -> None:
        super().leave(session, finished)
        self.averaging.notify()  # a sub-server may have lost its last client

    def _before_step(self, sub: SubServer) -> None:
        self.averaging.wait_for_average(sub)

    def _count(self, session: Session, samples: int) -> None:
        assert session.sub is not None
        self.averaging.count_step(session.sub, samples, lambda: self.book.finished(session))

    def finish(self) -> None:
        """Average the sub-servers' adapters once more if they trained since the last."""
        self.averaging.average_all()

    @property
    def averages(self) -> int:
        return self.averaging.averages

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super().restore(tensors, meta)
        self.averaging.averages = int(meta["averages"])

    @classmethod
    def from_settings(cls, settings: ServerSettings, split: SplitModel) -> HierarchicalMode:
        if settings.backend == "ray":
            return cls(_ray_sub_servers(settings, split), settings.average_every, settings.roster)
        first = LocalTrunk(split.trunk, settings.optimizer)
        others = [LocalTrunk(replicate_frozen(split.trunk), settings.optimizer)
                  for _ in range(settings.sub_servers - 1)]
        log.info("hierarchical mode: %d sub-servers over one frozen base, averaging every %d steps",
                 settings.sub_servers, settings.average_every)
        return cls([first, *others], settings.average_every, settings.roster)


def roster_slices(roster: list[str] | None, count: int) -> list[list[str] | None]:
    """The clients of each of ``count`` sub-servers: roster position modulo ``count``."""
    return [[n for i, n in enumerate(roster) if i % count == k] if roster else None for k in range(count)]


def _ray_sub_servers(settings: ServerSettings, split: SplitModel) -> list[SubServer]:
    from splitfed.server.ray_backend import TrunkRecipe, connect_ray, ray_sub_servers

    ray = settings.ray
    connect_ray(ray.address, ray.local_cpus)
    recipe = TrunkRecipe.of(settings.model, split.trunk, settings.partition.partition(), settings.adapter,
                            settings.seed, settings.optimizer, threads=max(1, int(ray.num_cpus)))
    subs = ray_sub_servers(recipe, split.trunk, roster_slices(settings.roster, settings.sub_servers),
                           ray.num_cpus, ray.num_gpus, ray.snapshot_every, colocated=ray.address is None)
    log.info("hierarchical mode on Ray: %d actor sub-servers (%g CPU, %g GPU each), averaging every %d "
             "steps", settings.sub_servers, ray.num_cpus, ray.num_gpus, settings.average_every)
    return list(subs)
