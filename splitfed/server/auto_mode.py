"""`--mode auto`: pick the server's parallel mode from its capacity, and say why."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Capacity:
    """What the server machine offers."""

    free_bytes: int
    cores: int
    accelerators: int


@dataclass(frozen=True)
class ModeChoice:
    mode: str
    sub_servers: int
    reason: str


def measure_capacity() -> Capacity:
    """Free memory (MemAvailable on Linux, else a conservative guess), CPU cores and CUDA devices."""
    free = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    import torch

    return Capacity(free_bytes=free, cores=os.cpu_count() or 1,
                    accelerators=torch.cuda.device_count() if torch.cuda.is_available() else 0)


def choose_mode(clients: int, capacity: Capacity, sub_server_bytes: int,
                batch_bytes_per_client: int) -> ModeChoice:
    """The mode that fits: one client -> sequential; several accelerators and the memory for one
    adapter copy each -> hierarchical (a sub-server per device); otherwise, when a batch of all the
    clients' activations fits in half the free memory -> client-batch; else sequential."""
    if clients <= 1:
        return ModeChoice("sequential", 1, "one client: nothing to run in parallel")
    if capacity.accelerators >= 2:
        k = min(capacity.accelerators, clients)
        if k * sub_server_bytes < capacity.free_bytes:
            return ModeChoice("hierarchical", k, f"{capacity.accelerators} accelerators and {clients} "
                              f"clients: {k} sub-servers in parallel, each costing "
                              f"{sub_server_bytes / 2**20:.1f} MiB")
    needed = clients * batch_bytes_per_client
    if needed < capacity.free_bytes // 2:
        return ModeChoice("client-batch", 1, f"{clients} clients' activations ({needed / 2**20:.0f} MiB) "
                          f"fit in half the free memory ({capacity.free_bytes / 2**20:.0f} MiB): one "
                          "batched step for all of them")
    return ModeChoice("sequential", 1, f"a batch of {clients} clients ({needed / 2**20:.0f} MiB) would not "
                      f"fit in half the free memory ({capacity.free_bytes / 2**20:.0f} MiB): one step at "
                      "a time")


def estimate_batch_bytes(hidden_size: int, blocks: int, tokens: int = 8 * 512) -> int:
    """A rough upper estimate of the activations one client's batch keeps for backward in the trunk
    (fp32; about 16 hidden-sized tensors per block per token)."""
    return 4 * hidden_size * tokens * blocks * 16
