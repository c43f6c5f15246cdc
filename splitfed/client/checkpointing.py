"""A client's training state as a checkpoint: adapters, optimizer, data position, random state, losses and
the privacy accountant (epsilon spent)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from splitfed.checkpoint import (
    Checkpoint,
    load_optimizer_state,
    load_rng_state,
    optimizer_state,
    rng_state,
)
from splitfed.client.settings import ClientSettings
from splitfed.client.split_client import SplitClient

FINGERPRINT_FIELDS = ("model", "seed", "partition", "adapter", "optimizer", "data", "batch_size", "steps",
                      "rounds", "fedavg", "privacy", "self_check")


@dataclass
class RunState:
    """How far a client's run has come (the data position is ``steps_done`` batches)."""

    steps_done: int = 0
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)  # each round's held-out check (self_check)


def fingerprint(settings: ClientSettings) -> dict[str, Any]:
    """The settings a resumed run must share with the checkpoint's."""
    return settings.model_dump(mode="json", include=set(FINGERPRINT_FIELDS))


def client_checkpoint(client: SplitClient, state: RunState, settings: ClientSettings) -> Checkpoint:
    tensors = {f"{part}/{key}": value for part, adapter in client.adapter_states().items()
               for key, value in adapter.items()}
    optimizer_tensors, optimizer_meta = optimizer_state(client.optimizer, "optimizer")
    tensors.update(optimizer_tensors)
    tensors.update(rng_state())
    cut_meta = None
    if client.cut is not None:  # the learned defense: weights, optimizer and sampling state
        tensors.update({f"cut/{key}": value.detach() for key, value in client.cut.state_dict().items()})
        cut_tensors, cut_meta = optimizer_state(client.cut_optimizer, "cut_optimizer")
        tensors.update(cut_tensors)
        tensors["cut_generator"] = client.cut.generator.get_state()
    meta = {"name": settings.name, "losses": state.losses, "tokens": state.tokens,
            "samples_seen": client.samples_seen, "rounds": state.rounds,
            "optimizer": optimizer_meta, "cut_optimizer": cut_meta,
            "settings": fingerprint(settings),
            "privacy": None if client.defense is None else client.defense.state_dict()}
    return Checkpoint(state.steps_done, tensors, meta)


def restore_client(client: SplitClient, checkpoint: Checkpoint, settings: ClientSettings) -> RunState:
    """Load ``checkpoint`` into ``client``; refuses one made by another client or other settings."""
    if checkpoint.meta.get("name") != settings.name:
        raise ValueError(f"checkpoint {checkpoint.path} belongs to client {checkpoint.meta.get('name')!r}")
    saved, current = checkpoint.meta.get("settings", {}), fingerprint(settings)
    differing = sorted(k for k in current if saved.get(k) != current[k])
    if differing:
        raise ValueError(f"checkpoint {checkpoint.path} was made with other settings "
                         f"({', '.join(differing)}): resume with the same settings, or start afresh")
    states = {part: {key[len(part) + 1:]: value for key, value in checkpoint.tensors.items()
                     if key.startswith(f"{part}/")} for part in ("head", "tail")}
    client.load_adapter_states(states)
    load_optimizer_state(client.optimizer, checkpoint.tensors, checkpoint.meta["optimizer"], "optimizer")
    if client.cut is not None:
        if "cut_generator" not in checkpoint.tensors:
            raise ValueError(f"checkpoint {checkpoint.path} has no learned defense: resume with the same "
                             "privacy settings, or start afresh")
        client.cut.load_state_dict({key[4:]: value for key, value in checkpoint.tensors.items()
                                    if key.startswith("cut/")})
        load_optimizer_state(client.cut_optimizer, checkpoint.tensors, checkpoint.meta["cut_optimizer"],
                             "cut_optimizer")
        client.cut.generator.set_state(checkpoint.tensors["cut_generator"])
    load_rng_state(checkpoint.tensors)
    client.samples_seen = int(checkpoint.meta.get("samples_seen", 0))
    if client.defense is not None and checkpoint.meta.get("privacy") is not None:
        client.defense.load_state_dict(checkpoint.meta["privacy"])  # the epsilon spent so far
    return RunState(checkpoint.step, list(checkpoint.meta["losses"]), int(checkpoint.meta["tokens"]),
                    list(checkpoint.meta.get("rounds", [])))
