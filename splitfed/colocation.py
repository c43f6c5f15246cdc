"""The environment of a client process that shares its machine's cores with other training processes.

PyTorch's OpenMP runtime (GNU libgomp) keeps each worker thread spinning for up to 300,000 iterations
after an operation, waiting for the next one. A client on its own machine loses nothing by it. A client
next to the server or to other clients (the demo; a benchmark on one machine) spins on cores that the
process now computing needs: on 2 cores, sequential training of SmolLM2 with 2 client processes ran at
0.78 of centralized throughput with the default spin and 0.94 with 10,000 spins
(``benchmarks/modes.py``). Short spins keep the quick hand-over between operations of a busy process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from splitfed.transport.addresses import is_loopback

SPIN_COUNT = 10_000


def colocated_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with a short OpenMP spin-wait for a client process
    that shares the cores; a spin or wait policy set explicitly is kept. Read when the process starts."""
    environment = dict(os.environ if base is None else base)
    if "OMP_WAIT_POLICY" not in environment:
        environment.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
    return environment


def spin_wait_hint(server: str, environment: Mapping[str, str] | None = None) -> str | None:
    """A hint to log when this client's server (``host:port``) is on this machine and the OpenMP spin-wait
    is the runtime's default; None otherwise."""
    environment = os.environ if environment is None else environment
    if "GOMP_SPINCOUNT" in environment or "OMP_WAIT_POLICY" in environment or not is_loopback(server):
        return None
    return (f"the server ({server}) is on this machine: a client started with GOMP_SPINCOUNT={SPIN_COUNT} "
            "(as `splitfed demo` starts its clients) does not spin-wait on the cores the server computes on")
