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

from splitfed.server.backends import SUB_SERVER_BACKENDS, in_process
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.modes.base import StepBook, SubServerMode
from splitfed.server.scheduler import TurnScheduler
from splitfed.server.service_parts import ServiceLimits, Session
from splitfed.server.sub_averaging import SubServerAveraging
from splitfed.server.sub_server import SubServer

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
        local = [t for t in trunks if isinstance(t, LocalTrunk)]
        if local and len(local) != len(trunks):
            raise ValueError("give hierarchical mode local trunks or sub-servers, not both")
        subs: list[SubServer] = in_process(local, roster) if local else list(trunks)  # type: ignore[arg-type]
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
        subs = SUB_SERVER_BACKENDS[settings.backend](settings, split)
        log.info("hierarchical mode: %d sub-servers (%s backend), averaging every %d steps", len(subs),
                 settings.backend, settings.average_every)
        return cls(subs, settings.average_every, settings.roster)
