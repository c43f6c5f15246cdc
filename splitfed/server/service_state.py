"""A trunk service's training state as a checkpoint: every sub-server's adapter, optimizer and step count,
the FedAvg round counters, the round-robin position and each client's completed steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitfed.checkpoint import Checkpoint, load_optimizer_state, optimizer_state
from splitfed.models import adapter_state, load_adapter_state, sparse_state

if TYPE_CHECKING:
    from splitfed.server.trunk_service import TrunkService


def service_checkpoint(service: TrunkService) -> Checkpoint:
    """Call with the service quiet (no step in flight), e.g. after ``drain``."""
    tensors = {}
    optimizers = {}
    trunks = [sub.trunk for sub in service._subs]
    if service.batcher is not None:
        trunks = [service.batcher.trunk]
    for index, trunk in enumerate(trunks):
        part = trunk.trunk
        tensors.update({f"sub{index}/adapter/{k}": v for k, v in adapter_state(part).items()})
        tensors.update({f"sub{index}/sparse/{k}": v for k, v in sparse_state(part).items()})
        opt_tensors, opt_meta = optimizer_state(trunk.optimizer, f"sub{index}/optimizer")
        tensors.update(opt_tensors)
        optimizers[str(index)] = {"optimizer": opt_meta, "steps": trunk.steps}
    meta = {
        "subs": optimizers,
        "progress": dict(service.progress),
        "plain_rounds": service.aggregator.completed_round,
        "secure_rounds": service.secure_rounds.last_round,
        "turn": service.scheduler.position,
        "averages": service.averages,
    }
    return Checkpoint(service.steps, tensors, meta)


def restore_service(service: TrunkService, checkpoint: Checkpoint) -> None:
    """Load ``checkpoint`` into a freshly built service of the same mode and sub-servers."""
    trunks = [sub.trunk for sub in service._subs]
    if service.batcher is not None:
        trunks = [service.batcher.trunk]
    subs = checkpoint.meta["subs"]
    if len(subs) != len(trunks):
        raise ValueError(f"the checkpoint has {len(subs)} sub-server(s), this server {len(trunks)}: resume "
                         "with the same mode and sub_servers")
    for index, trunk in enumerate(trunks):
        prefix = f"sub{index}/adapter/"
        load_adapter_state(trunk.trunk, {k[len(prefix):]: v for k, v in checkpoint.tensors.items()
                                         if k.startswith(prefix)})
        sparse = {k[len(f"sub{index}/sparse/"):]: v for k, v in checkpoint.tensors.items()
                  if k.startswith(f"sub{index}/sparse/")}
        if sparse:
            trunk.restore_sparse(sparse)
        load_optimizer_state(trunk.optimizer, checkpoint.tensors, subs[str(index)]["optimizer"],
                             f"sub{index}/optimizer")
        trunk.steps = int(subs[str(index)]["steps"])
    service.progress.update({k: int(v) for k, v in checkpoint.meta["progress"].items()})
    service.aggregator.completed_round = int(checkpoint.meta["plain_rounds"])
    service.secure_rounds.last_round = int(checkpoint.meta["secure_rounds"])
    service.scheduler.position = int(checkpoint.meta["turn"])
    service.averaging.averages = int(checkpoint.meta["averages"])
