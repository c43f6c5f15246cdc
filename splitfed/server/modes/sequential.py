"""Sequential mode: one client step at a time through one trunk, in roster order (reproducible) or in
order of arrival."""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.modes.base import SubServerMode
from splitfed.server.scheduler import TurnScheduler
from splitfed.server.sub_server import InProcessSubServer

if TYPE_CHECKING:
    from splitfed.models import SplitModel
    from splitfed.server.settings import ServerSettings


class SequentialMode(SubServerMode):
    """One sub-server; a client holds the turn from its forward to its backward."""

    name = "sequential"

    def __init__(self, trunk: LocalTrunk, roster: list[str] | None = None) -> None:
        scheduler = TurnScheduler(roster)
        super().__init__([InProcessSubServer(trunk, scheduler)], scheduler, roster)

    @classmethod
    def from_settings(cls, settings: ServerSettings, split: SplitModel) -> SequentialMode:
        return cls(LocalTrunk(split.trunk, settings.optimizer, settings.sparse), settings.roster)
