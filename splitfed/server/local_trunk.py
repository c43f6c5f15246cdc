"""The trunk served in-process: one frozen base, one trainable trunk adapter, per-client step state."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from splitfed.models import TrunkPart
from splitfed.training.optim import OptimizerSettings

log = logging.getLogger(__name__)


class TrunkProtocolError(RuntimeError):
    """A client called backward without a matching forward (or twice)."""


@dataclass
class _Pending:
    inputs: torch.Tensor
    outputs: torch.Tensor


class LocalTrunk:
    """Sequential trunk service: every backward is followed by one optimizer step on the trunk adapter.

    Implements ``splitfed.training.trunk.TrunkEndpoint``.
    """

    def __init__(self, trunk: TrunkPart, optimizer: OptimizerSettings | None = None) -> None:
        self.trunk = trunk
        self.optimizer = (optimizer or OptimizerSettings()).build(trunk.parameters())
        self._pending: dict[str, _Pending] = {}
        self.steps = 0

    def forward(
        self,
        client_id: str,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        train: bool = True,
        labelled_tokens: int = 0,
    ) -> torch.Tensor:
        self.trunk.train(train)
        if not train:
            with torch.no_grad():
                return self.trunk(hidden, attention_mask)
        inputs = hidden.detach().requires_grad_(True)
        outputs = self.trunk(inputs, attention_mask)
        self._pending[client_id] = _Pending(inputs, outputs)
        return outputs.detach()

    def backward(self, client_id: str, grad_output: torch.Tensor) -> torch.Tensor:
        pending = self._pending.pop(client_id, None)
        if pending is None:
            raise TrunkProtocolError(f"backward from {client_id!r} without a pending forward")
        if grad_output.shape != pending.outputs.shape:
            raise TrunkProtocolError(
                f"gradient shape {tuple(grad_output.shape)} != output shape {tuple(pending.outputs.shape)}"
            )
        pending.outputs.backward(grad_output)
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return pending.inputs.grad

    def pending(self) -> list[str]:
        """Clients whose training forward awaits its backward (the server holds their graphs)."""
        return sorted(self._pending)

    def drop(self, client_id: str) -> None:
        """Free a client's pending step (its autograd graph) without training on it."""
        if self._pending.pop(client_id, None) is not None:
            log.info("dropped the pending step of %s", client_id)
