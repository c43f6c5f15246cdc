"""Where hierarchical mode's sub-servers run: one builder per backend, registered in
``SUB_SERVER_BACKENDS``. A new backend (one GPU per sub-server, another cluster engine) is one module
whose sub-servers follow ``SubServer`` and whose builder takes ``(settings, split)``, plus one line
here; ``splitfed serve --backend`` offers every entry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from splitfed.server.compute import ComputeThread
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.scheduler import TurnScheduler
from splitfed.server.sub_server import InProcessSubServer, SubServer
from splitfed.training.replicate import replicate_frozen

if TYPE_CHECKING:
    from splitfed.models import SplitModel
    from splitfed.server.settings import ServerSettings

BackendBuilder = Callable[["ServerSettings", "SplitModel"], list[SubServer]]


def roster_slices(roster: list[str] | None, count: int) -> list[list[str] | None]:
    """The clients of each of ``count`` sub-servers: roster position modulo ``count``."""
    return [[n for i, n in enumerate(roster) if i % count == k] if roster else None for k in range(count)]


def in_process(trunks: Sequence[LocalTrunk], roster: list[str] | None) -> list[SubServer]:
    """One sub-server per trunk in this process, each on its own compute thread with its share of the
    cores (parallel sub-servers share them)."""
    threads = max(1, torch.get_num_threads() // len(trunks))
    rosters = roster_slices(roster, len(trunks))
    return [InProcessSubServer(trunk, TurnScheduler(rosters[k]), ComputeThread(f"trunk-compute-{k}", threads))
            for k, trunk in enumerate(trunks)]


def threads_backend(settings: ServerSettings, split: SplitModel) -> list[SubServer]:
    """``sub_servers`` trunk adapters over **one** frozen base in this process."""
    first = LocalTrunk(split.trunk, settings.optimizer)
    others = [LocalTrunk(replicate_frozen(split.trunk), settings.optimizer)
              for _ in range(settings.sub_servers - 1)]
    return in_process([first, *others], settings.roster)


def ray_backend(settings: ServerSettings, split: SplitModel) -> list[SubServer]:
    """Each sub-server a Ray actor with its own base and resources (``ray_backend.py``)."""
    from splitfed.server.ray_backend import sub_servers_from_settings

    return sub_servers_from_settings(settings, split)


SUB_SERVER_BACKENDS: dict[str, BackendBuilder] = {
    "threads": threads_backend,
    "ray": ray_backend,
}
