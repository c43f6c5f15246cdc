"""A sub-server: one trunk adapter with its optimizer, its turn scheduler, the thread that runs its
tensor work and its generation caches.

Modes talk to their sub-servers only through ``SubServer``: run a step, get and set the adapter,
checkpoint and restore. That is the seam a backend beyond this process (Ray, one GPU per sub-server)
plugs into; the only implementation today is ``InProcessSubServer``, whose tensor work runs on a
``ComputeThread`` of this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from splitfed.checkpoint import load_optimizer_state, optimizer_state
from splitfed.endpoints import MicroBatch, micro_kwargs
from splitfed.models import TrunkPart, adapter_state, load_adapter_state, sparse_state
from splitfed.server.compute import ComputeThread
from splitfed.server.generation import GenerationCaches
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.scheduler import TurnScheduler


class SubServer(Protocol):
    """What a mode needs of a sub-server, wherever its tensors live."""

    scheduler: TurnScheduler
    generation: GenerationCaches | None
    sessions: int  # clients assigned to it now
    steps_since: int  # training steps since its adapter was last averaged (hierarchical mode)
    samples_since: int

    @property
    def steps(self) -> int: ...

    @property
    def part(self) -> TrunkPart:
        """The trunk part whose adapter is saved and served."""
        ...

    def forward(self, client: str, hidden: torch.Tensor, mask: torch.Tensor | None,
                train: bool, blocks: tuple[int, int] | None = None,
                micro: MicroBatch | None = None) -> torch.Tensor:
        """The trunk (or its ``blocks`` only: a client with its own partition) on ``hidden`` (one
        ``micro``-batch of a step, if set)."""
        ...

    def backward(self, client: str, grad: torch.Tensor, micro: MicroBatch | None = None) -> torch.Tensor:
        """Backpropagate; the adapter steps after the last backward of the step."""
        ...

    def drop(self, client: str) -> None:
        """Forget ``client``'s open step (its autograd graph)."""
        ...

    def adapter(self) -> dict[str, torch.Tensor]: ...

    def load_adapter(self, state: dict[str, torch.Tensor]) -> None: ...

    def checkpoint(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> None: ...

    def start_generation(self, budget_bytes: int, ttl_s: float, streams: int) -> None: ...

    def close(self) -> None: ...


def trainable_checkpoint(trunk: Any, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A trainable trunk's adapter, sparse deltas, optimizer state and step count, keyed under ``prefix``
    (``trunk``: a ``LocalTrunk`` or a ``BatchedTrunk``)."""
    tensors = {f"{prefix}/adapter/{k}": v for k, v in adapter_state(trunk.trunk).items()}
    tensors.update({f"{prefix}/sparse/{k}": v for k, v in sparse_state(trunk.trunk).items()})
    opt_tensors, opt_meta = optimizer_state(trunk.optimizer, f"{prefix}/optimizer")
    tensors.update(opt_tensors)
    return tensors, {"optimizer": opt_meta, "steps": trunk.steps}


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def restore_trainable(trunk: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                      prefix: str) -> None:
    """Load what ``trainable_checkpoint`` saved under ``prefix`` into ``trunk``."""
    load_adapter_state(trunk.trunk, _under(tensors, f"{prefix}/adapter/"))
    deltas = _under(tensors, f"{prefix}/sparse/")
    if deltas:
        trunk.restore_sparse(deltas)
    load_optimizer_state(trunk.optimizer, tensors, meta["optimizer"], f"{prefix}/optimizer")
    trunk.steps = int(meta["steps"])


@dataclass
class InProcessSubServer:
    """A sub-server in this process: a ``LocalTrunk`` whose tensor work runs on one compute thread."""

    trunk: LocalTrunk
    scheduler: TurnScheduler
    compute: ComputeThread = field(default_factory=ComputeThread)
    steps_since: int = 0
    samples_since: int = 0
    sessions: int = 0
    generation: GenerationCaches | None = None

    @property
    def steps(self) -> int:
        return self.trunk.steps

    @property
    def part(self) -> TrunkPart:
        return self.trunk.trunk

    def forward(self, client: str, hidden: torch.Tensor, mask: torch.Tensor | None,
                train: bool, blocks: tuple[int, int] | None = None,
                micro: MicroBatch | None = None) -> torch.Tensor:
        return self.compute.run(self.trunk.forward, client, hidden, mask, train=train, blocks=blocks,
                                **micro_kwargs(micro))

    def backward(self, client: str, grad: torch.Tensor, micro: MicroBatch | None = None) -> torch.Tensor:
        return self.compute.run(self.trunk.backward, client, grad, **micro_kwargs(micro))

    def run(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Any other tensor work on this sub-server's compute thread (e.g. the two-part loss)."""
        return self.compute.run(function, *args, **kwargs)

    def drop(self, client: str) -> None:
        self.trunk.drop(client)

    def adapter(self) -> dict[str, torch.Tensor]:
        return adapter_state(self.part)

    def load_adapter(self, state: dict[str, torch.Tensor]) -> None:
        self.compute.run(load_adapter_state, self.part, state)

    def checkpoint(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return trainable_checkpoint(self.trunk, prefix)

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> None:
        restore_trainable(self.trunk, tensors, meta, prefix)

    def start_generation(self, budget_bytes: int, ttl_s: float, streams: int) -> None:
        self.generation = GenerationCaches(self.part, budget_bytes, ttl_s, streams, compute=self.compute)

    def close(self) -> None:
        self.compute.close()
