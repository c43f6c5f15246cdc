"""The ``device`` setting of every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

``check_device`` runs in the settings' validation, before anything is loaded: a device this machine
does not have, or a dtype it cannot compute in, is refused with what is available. ``resolve_device``
turns the setting into a ``torch.device`` and says which one ``auto`` chose.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, Field, field_validator, model_validator

from splitfed.models.placement import PlacementError, available_devices, existing_device

__all__ = ["OnDevice", "available_devices", "check_device", "place_client_parts", "resolve_device"]

if TYPE_CHECKING:
    from splitfed.models.split import SplitModel

log = logging.getLogger(__name__)

DEVICE_DESCRIPTION = ("where this side's parts compute: auto (a CUDA device when there is one, else the CPU; "
                      "the choice is logged), cpu, cuda or cuda:N")


def check_device(name: str) -> str:
    """``name`` if it is ``auto`` or this machine has that device; else a ``PlacementError`` (a
    ``ValueError``) naming what is available."""
    if name != "auto":
        existing_device(name)
    return name


def check_dtype_on(name: str, dtype: str) -> None:
    """Refuse a dtype the device cannot compute in (bfloat16 on a CUDA device older than Ampere)."""
    device = _pick(name)
    if device.type == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise PlacementError(f"device {name!r} cannot compute in bfloat16 (it needs compute capability 8.0 "
                             "or later): use dtype float16 or float32")


def fast_half_dtype(device: torch.device) -> str:
    """What ``dtype: auto`` picks on ``device``: bfloat16 where it computes natively (a CUDA device of
    compute capability 8.0 or later; a CPU with AVX512-BF16 or AMX), float16 on an older CUDA device,
    float32 on a CPU without bf16 instructions (where bf16 is emulated, slower than float32)."""
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    cpu = torch.cpu
    native = any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                     "_is_amx_tile_supported"))
    return "bfloat16" if native else "float32"


class OnDevice(BaseModel):
    """The ``dtype`` and ``device`` every command's settings share, checked before anything loads."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of this side's frozen base weights and of its computation (half: half "
                               "the memory); adapters and optimizer state stay float32, and hidden states "
                               "are converted at the cut to the wire codec's dtype. auto: bfloat16 where the "
                               "device computes in it natively (CPU with AVX512-BF16 or AMX, CUDA 8.0+), "
                               "float16 on older CUDA devices, else float32 (the choice is logged)")
    device: str = Field("auto", description=DEVICE_DESCRIPTION)

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str) -> str:
        return check_device(device)

    @model_validator(mode="after")
    def _device_runs_the_dtype(self) -> OnDevice:
        if self.dtype == "auto":
            self.dtype = fast_half_dtype(_pick(self.device))
            log.info("dtype auto -> %s on %s", self.dtype, self.device)
        check_dtype_on(self.device, self.dtype)
        return self


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
    return existing_device(name)


def place_client_parts(split: SplitModel, device: torch.device, with_trunk: bool = False) -> None:
    """Move a client's head and tail (and, for a learned defense's warm-up through the public model, its
    local copy of the trunk) to ``device``; their adapters stay float32 wherever they are."""
    if device.type == "cpu":
        return
    for part in (split.head, split.tail, *([split.trunk] if with_trunk else [])):
        part.to(device)
    log.info("head and tail on %s", device)
