"""The trusted slice: the one component through which the server's secrets are persisted and loaded.

The server's secrets are the trunk adapter(s), their optimizer state, the sparse deltas and the
session keys. The slice owns the sealing key (obtained from a key provider, optionally only after
attestation) and is the only code that writes or reads the trunk state at rest: checkpoints and the
saved trunk adapter are sealed with AEAD when sealing is configured. Its interface is narrow:
``checkpoints`` (a sealed ``CheckpointStore``), ``save_trunk`` and ``load_trunk``.

What this protects without TEE hardware: state at rest (a stolen disk or backup, a tampered, truncated
or swapped checkpoint). It does not protect the process memory from the host's operator; for that the
server process must be started inside an enclave or confidential VM whose attestation gates the key.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from splitfed.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from splitfed.models import TrunkPart, adapter_state, load_adapter_state, load_sparse_state, save_adapter
from splitfed.models import sparse_state as part_sparse_state
from splitfed.models.adapters import read_adapter, read_sparse
from splitfed.security import Sealer
from splitfed.security.attestation import Attester, Verifier
from splitfed.security.key_providers import SealingSettings

log = logging.getLogger(__name__)

SEALED_TRUNK = "sealed-trunk"
SPARSE = "sparse/"


class TrustedSlice:
    """Holds the sealer (never the key outside it) and persists the trunk's state through it."""

    def __init__(self, sealing: SealingSettings | None = None, checkpoint_dir: str | Path = "checkpoints",
                 keep: int = 2, attester: Attester | None = None, verifier: Verifier | None = None) -> None:
        settings = sealing or SealingSettings()
        self._sealer: Sealer | None = settings.sealer(attester, verifier)
        self.checkpoints = CheckpointStore(checkpoint_dir, keep, sealer=self._sealer)
        if self._sealer is not None:
            log.info("trusted slice: checkpoints and trunk adapter sealed with %s (key from %s)",
                     settings.algorithm, settings.key_provider)

    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    def save_trunk(self, part: TrunkPart, directory: str | Path, base_model: str = "", step: int = 0) -> Path:
        """Save the trunk adapter: a peft directory in the clear, or a sealed checkpoint under
        ``directory/sealed-trunk`` when sealing is on (no cleartext copy is written)."""
        if self._sealer is None:
            return save_adapter(part, directory, base_model=base_model)
        store = CheckpointStore(Path(directory) / SEALED_TRUNK, keep=1, sealer=self._sealer)
        meta = {"role": part.role, "layers": list(part.layer_indices), "base_model": base_model}
        tensors = {**adapter_state(part), **{SPARSE + k: v for k, v in part_sparse_state(part).items()}}
        return store.save(Checkpoint(step, tensors, meta))

    def load_trunk_state(self, directory: str | Path) -> dict[str, torch.Tensor]:
        """The trunk adapter's weights saved by ``save_trunk`` (sealed or not); sparse deltas (indices
        and values) under keys starting with ``sparse/``."""
        directory = Path(directory)
        sealed = directory / SEALED_TRUNK
        if sealed.is_dir():
            checkpoint = CheckpointStore(sealed, sealer=self._sealer).latest()
            if checkpoint is None:
                raise CheckpointError(f"no sealed trunk adapter in {sealed}")
            return checkpoint.tensors
        if self._sealer is not None:
            raise CheckpointError(f"sealing is on but {directory} holds no sealed trunk adapter; refusing "
                                  "a cleartext one")
        return {**read_adapter(directory)[1], **{SPARSE + k: v for k, v in read_sparse(directory).items()}}

    def load_trunk(self, part: TrunkPart, directory: str | Path) -> None:
        """Load what ``save_trunk`` saved into ``part`` (its adapter already injected)."""
        state = self.load_trunk_state(directory)
        sparse = {k[len(SPARSE):]: v for k, v in state.items() if k.startswith(SPARSE)}
        load_adapter_state(part, {k: v for k, v in state.items() if not k.startswith(SPARSE)})
        if sparse:
            load_sparse_state(part, sparse)
