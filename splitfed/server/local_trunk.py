"""The trunk served in-process: one frozen base, one trainable trunk adapter, per-client step state."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from splitfed.endpoints import MicroBatch
from splitfed.models import SparseSpec, TrunkPart, load_sparse_state, set_training, sparse_parameter_count
from splitfed.server.sparse_trunk import SparseSelection, attach_sparse
from splitfed.training.guarded_step import guarded_step
from splitfed.training.optim import OptimizerSettings

log = logging.getLogger(__name__)


class TrunkProtocolError(RuntimeError):
    """A client called backward without a matching forward (or twice)."""


@dataclass
class _Pending:
    inputs: torch.Tensor
    outputs: torch.Tensor


def _pending_key(client_id: str, micro: MicroBatch | None) -> str:
    return client_id if micro is None else f"{client_id}#{micro.index}"


class LocalTrunk:
    """Sequential trunk service: every backward is followed by one optimizer step on the trunk adapter;
    a step in micro-batches steps once, after the backward of its last micro-batch.

    Implements ``splitfed.endpoints.TrunkEndpoint`` and ``MicroBatchEndpoint``.
    """

    accepts_micro_batches = True

    def __init__(self, trunk: TrunkPart, optimizer: OptimizerSettings | None = None,
                 sparse: SparseSpec | None = None) -> None:
        self.trunk = trunk
        self._optimizer_settings = optimizer or OptimizerSettings()
        self.optimizer = self._optimizer_settings.build(trunk.parameters())
        self._pending: dict[str, _Pending] = {}
        self._micro_done: dict[str, int] = {}  # backwards of a micro-batched step so far, per client
        self.steps = 0
        self.dropped_steps = 0  # steps whose update would have been non-finite (guarded_step)
        already = sparse_parameter_count(trunk) > 0  # e.g. a trained trunk adapter with its deltas
        self.selection = SparseSelection(trunk, sparse) if sparse is not None and not already else None

    def _selecting(self) -> bool:
        return self.selection is not None and not self.selection.done

    def _after_backward(self) -> None:
        """The selection phase of sparse fine-tuning: score, then attach the deltas once it is over."""
        if self._selecting():
            assert self.selection is not None
            self.selection.after_backward()
            if self.selection.done:
                self.selection.attach(self.optimizer)
                if self.optimizer is None:  # no adapter but the deltas
                    self.optimizer = self._optimizer_settings.build(self.trunk.parameters())

    def restore_sparse(self, state: dict[str, torch.Tensor]) -> None:
        """Resume: attach the checkpoint's deltas (indices + values) and end the selection phase; call
        before loading the optimizer state (the deltas are its last parameter group)."""
        indices = {k[: -len(".sparse_indices")]: v for k, v in state.items() if k.endswith(".sparse_indices")}
        attach_sparse(self.trunk, indices, self.optimizer)
        if self.optimizer is None:
            self.optimizer = self._optimizer_settings.build(self.trunk.parameters())
        load_sparse_state(self.trunk, state)
        if self.selection is not None:
            self.selection.batches = self.selection.spec.selection_batches

    def forward(
        self,
        client_id: str,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        train: bool = True,
        labelled_tokens: int = 0,
        blocks: tuple[int, int] | None = None,
        micro: MicroBatch | None = None,
    ) -> torch.Tensor:
        """The trunk (or its ``blocks`` [start, end) only) on ``hidden``; in training the graph is kept
        for ``backward`` (one per micro-batch). Blocks not run get no gradient, so their adapter does not
        move."""
        set_training(self.trunk, train)
        if not train:
            with torch.no_grad():
                return self.trunk(hidden, attention_mask, blocks=blocks)
        inputs = hidden.detach().requires_grad_(True)
        if self._selecting():
            self.selection.before_forward()  # type: ignore[union-attr]
        outputs = self.trunk(inputs, attention_mask, blocks=blocks)
        key = _pending_key(client_id, micro)
        if key in self._pending:
            raise TrunkProtocolError(f"a second training forward from {key!r} before its backward")
        self._pending[key] = _Pending(inputs, outputs)
        return outputs.detach()

    def backward(self, client_id: str, grad_output: torch.Tensor,
                 micro: MicroBatch | None = None) -> torch.Tensor:
        """Backpropagate ``grad_output`` through the pending forward (of ``micro``); step the adapter
        unless micro-batches of this step still await their backward."""
        pending = self._pending.pop(_pending_key(client_id, micro), None)
        if pending is None:
            raise TrunkProtocolError(f"backward from {client_id!r} without a pending forward")
        if grad_output.shape != pending.outputs.shape:
            raise TrunkProtocolError(
                f"gradient shape {tuple(grad_output.shape)} != output shape {tuple(pending.outputs.shape)}"
            )
        pending.outputs.backward(grad_output.to(pending.outputs.device))  # a placed trunk ends elsewhere
        if micro is not None:
            done = self._micro_done.get(client_id, 0) + 1
            if done < micro.count:
                self._micro_done[client_id] = done  # the gradients accumulate until the last one
                return pending.inputs.grad
            self._micro_done.pop(client_id, None)
        self._after_backward()
        if self.optimizer is not None and not guarded_step(self.optimizer, "trunk adapter"):
            self.dropped_steps += 1
        self.steps += 1
        return pending.inputs.grad

    def pending(self) -> list[str]:
        """Clients whose training forward awaits its backward (the server holds their graphs)."""
        return sorted({key.partition("#")[0] for key in self._pending})

    def drop(self, client_id: str) -> None:
        """Free a client's pending step (its autograd graphs, every micro-batch's) without training on it;
        gradients its micro-batches had accumulated are cleared."""
        keys = [k for k in self._pending if k == client_id or k.startswith(f"{client_id}#")]
        for key in keys:
            del self._pending[key]
        if self._micro_done.pop(client_id, None) is not None:
            self.trunk.zero_grad(set_to_none=True)
        if keys:
            log.info("dropped the pending step of %s", client_id)
