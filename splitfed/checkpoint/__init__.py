"""Atomic, checksummed checkpoints and the state that goes into them."""

from splitfed.checkpoint.state import load_optimizer_state, load_rng_state, optimizer_state, rng_state
from splitfed.checkpoint.store import Checkpoint, CheckpointError, CheckpointStore

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "load_optimizer_state",
    "load_rng_state",
    "optimizer_state",
    "rng_state",
]
