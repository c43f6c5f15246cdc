"""Client-batch training on the trunk: several clients' forwards run as one batch.

The rows of the clients (whose sequence lengths differ) are left-padded to one length, concatenated
along the batch axis and run through the trunk once; each client gets its own slice back. The
gradients that come back are weighted by each client's share of the labelled tokens, so that one
backward and one optimizer step give exactly the update of a centralized step on the concatenated
batch (mean loss over all its labelled tokens). Rows do not interact in a decoder, and left padding
does not move the positions of real tokens, so the batching itself changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from splitfed.models import TrunkPart
from splitfed.training.guarded_step import guarded_step
from splitfed.training.optim import OptimizerSettings

log = logging.getLogger(__name__)


class ClientBatchError(RuntimeError):
    """A batch step used out of order (backward before forward, unknown client, wrong shape)."""


@dataclass(frozen=True)
class ForwardItem:
    """One client's contribution to a batched forward."""

    client_id: str
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    labelled_tokens: int


@dataclass
class _Slot:
    rows: slice
    length: int
    weight: float


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dimension 1 on the left to ``length`` with zeros."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 2) + [missing, 0]
    return F.pad(tensor, pad)


class BatchedTrunk:
    """The trunk with one shared adapter and optimizer, stepping once per batch of client forwards."""

    def __init__(self, trunk: TrunkPart, optimizer: OptimizerSettings | None = None) -> None:
        self.trunk = trunk
        self.optimizer = (optimizer or OptimizerSettings()).build(trunk.parameters())
        self.steps = 0
        self.dropped_steps = 0  # steps whose update would have been non-finite (guarded_step)
        self._slots: dict[str, _Slot] = {}
        self._inputs: torch.Tensor | None = None
        self._outputs: torch.Tensor | None = None

    def forward(self, items: list[ForwardItem]) -> dict[str, torch.Tensor]:
        """One trunk forward over every client's rows; returns each client's output slice."""
        if self._outputs is not None:
            raise ClientBatchError("the previous batch still waits for its backward")
        if not items or len({item.client_id for item in items}) != len(items):
            raise ClientBatchError("a batch needs at least one item and one item per client")
        total_tokens = sum(item.labelled_tokens for item in items)
        if total_tokens <= 0:
            raise ClientBatchError("a training batch needs labelled tokens")
        length = max(item.hidden.shape[1] for item in items)
        slots, start = {}, 0
        for item in items:
            rows = item.hidden.shape[0]
            slots[item.client_id] = _Slot(slice(start, start + rows), item.hidden.shape[1],
                                          item.labelled_tokens / total_tokens)
            start += rows
        hidden = torch.cat([_left_pad(item.hidden, length) for item in items])
        mask = torch.cat([_left_pad(item.attention_mask, length) for item in items])
        self.trunk.train()
        self._inputs = hidden.detach().requires_grad_(True)
        self._outputs = self.trunk(self._inputs, mask)
        self._slots = slots
        return {cid: self._outputs[slot.rows, -slot.length :].detach() for cid, slot in slots.items()}

    def backward(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Backpropagate the clients' gradients in one pass and step the optimizer once.

        A client of the batch that sent no gradient (it missed the deadline) is left out: the update
        is that of a centralized step on the other clients' rows. Returns each sender's input
        gradient, as if its own loss had been backpropagated alone.
        """
        if self._outputs is None or self._inputs is None:
            raise ClientBatchError("backward without a batched forward")
        unknown = set(grads) - set(self._slots)
        if unknown:
            raise ClientBatchError(f"gradients from clients not in this batch: {sorted(unknown)}")
        if not grads:
            raise ClientBatchError("no client of the batch sent a gradient")
        # re-weight over the clients that did send one: the update is the senders' centralized step
        present = sum(self._slots[cid].weight for cid in grads)
        for cid in grads:
            self._slots[cid].weight /= present
        full = torch.zeros_like(self._outputs)
        for cid, grad in grads.items():
            slot = self._slots[cid]
            expected = (slot.rows.stop - slot.rows.start, slot.length, full.shape[-1])
            if tuple(grad.shape) != expected:
                raise ClientBatchError(f"{cid}: gradient shape {tuple(grad.shape)} != {expected}")
            full[slot.rows, -slot.length :] = grad * slot.weight
        dropped = sorted(set(self._slots) - set(grads))
        if dropped:
            log.warning("client-batch step %d: no gradient from %s, left out of the update",
                        self.steps + 1, ", ".join(dropped))
        self._outputs.backward(full)
        if self.optimizer is not None and not guarded_step(self.optimizer, "trunk adapter (client-batch)"):
            self.dropped_steps += 1
        self.steps += 1
        result = {cid: self._inputs.grad[self._slots[cid].rows, -self._slots[cid].length :]
                  / self._slots[cid].weight for cid in grads}
        self._inputs = self._outputs = None
        self._slots = {}
        return result

    def abandon(self) -> None:
        """Forget a batch whose backward will not come (frees its autograd graph)."""
        self._inputs = self._outputs = None
        self._slots = {}
