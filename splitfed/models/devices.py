"""The ``device`` setting of every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

``check_device`` runs in the settings' validation, before anything is loaded: a device this machine
does not have, or a dtype it cannot compute in, is refused with what is available. ``resolve_device``
turns the setting into a ``torch.device`` and says which one ``auto`` chose.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from splitfed.models.placement import PlacementError, device_capacity

if TYPE_CHECKING:
    from splitfed.models.split import SplitModel

log = logging.getLogger(__name__)

DEVICE_DESCRIPTION = ("where this side's parts compute: auto (a CUDA device when there is one, else the CPU; "
                      "the choice is logged), cpu, cuda or cuda:N")


def available_devices() -> list[str]:
    """The devices of this machine, as a ``device`` setting names them."""
    return ["cpu", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]


def check_device(name: str, dtype: str = "float32") -> str:
    """``name`` if this machine has that device and it computes in ``dtype``; else a ``PlacementError``
    (a ``ValueError``) naming what is available."""
    if name != "auto":
        try:
            device_capacity(name)
        except PlacementError as error:
            raise PlacementError(f"{error} (available: {', '.join(available_devices())})") from None
    device = _pick(name)
    if device.type == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise PlacementError(f"device {name!r} cannot compute in bfloat16 (it needs compute capability 8.0 "
                             "or later): use dtype float16 or float32")
    return name


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` of a checked setting; ``auto`` logs what it chose."""
    device = _pick(name)
    if name == "auto":
        what = torch.cuda.get_device_name(device) if device.type == "cuda" else "no CUDA device here"
        log.info("device auto -> %s (%s)", device, what)
    return device


def _pick(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    return torch.device("cuda:0") if device.type == "cuda" and device.index is None else device


def place_client_parts(split: SplitModel, device: torch.device, with_trunk: bool = False) -> None:
    """Move a client's head and tail (and, for a learned defense's warm-up through the public model, its
    local copy of the trunk) to ``device``; their adapters stay float32 wherever they are."""
    if device.type == "cpu":
        return
    for part in (split.head, split.tail, *([split.trunk] if with_trunk else [])):
        part.to(device)
    log.info("head and tail on %s", device)
