"""A trunk service's training state as a checkpoint: what its mode holds (every sub-server's adapter,
optimizer and step count), the FedAvg round counters, the round-robin position and each client's
completed steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitfed.aggregation import rounds_status
from splitfed.checkpoint import Checkpoint

if TYPE_CHECKING:
    from splitfed.server.trunk_service import TrunkService


def service_checkpoint(service: TrunkService) -> Checkpoint:
    """Call with the service quiet (no step in flight), e.g. after ``drain``."""
    tensors, mode_meta = service.mode.checkpoint()
    meta = {
        **mode_meta,
        "progress": dict(service.progress),
        **rounds_status(service.rounds),
        "turn": service.scheduler.position,
    }
    return Checkpoint(service.steps, tensors, meta)


def restore_service(service: TrunkService, checkpoint: Checkpoint) -> None:
    """Load ``checkpoint`` into a freshly built service of the same mode and sub-servers."""
    service.mode.restore(checkpoint.tensors, checkpoint.meta)
    service.progress.update({k: int(v) for k, v in checkpoint.meta["progress"].items()})
    service.rounds.last_round = int(checkpoint.meta[f"{service.rounds.name}_rounds"])
    service.scheduler.position = int(checkpoint.meta["turn"])
