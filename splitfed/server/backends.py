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
from splitfed.server.scheduler import TurnScheduler, roster_slices
from splitfed.server.settings import SUB_SERVER_BACKEND_NAMES
from splitfed.server.sub_server import InProcessSubServer, SubServer
from splitfed.training.replicate import replicate_frozen

if TYPE_CHECKING:
    from splitfed.models import SplitModel
    from splitfed.server.settings import ServerSettings

BackendBuilder = Callable[["ServerSettings", "SplitModel"], list[SubServer]]


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
if tuple(SUB_SERVER_BACKENDS) != SUB_SERVER_BACKEND_NAMES:  # a backend added here is named in the settings
    raise RuntimeError(f"backends {tuple(SUB_SERVER_BACKENDS)} differ from the settings' "
                       f"{SUB_SERVER_BACKEND_NAMES}")
