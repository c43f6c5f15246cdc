"""What a client needs from "the trunk": the seam where the network transport plugs in.

The in-process implementation is ``splitfed.server.LocalTrunk``; a gRPC stub implements the same
protocol, so the training loop never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TrunkEndpoint(Protocol):
    """The server side of one split step, as a client sees it."""

    def forward(
        self,
        client_id: str,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        train: bool = True,
        labelled_tokens: int = 0,
    ) -> torch.Tensor:
        """Run the trunk on the head's output; with ``train`` the server keeps what backward needs.
        ``labelled_tokens`` (training) is how many tokens the client's loss averages over."""
        ...

    def backward(self, client_id: str, grad_output: torch.Tensor) -> torch.Tensor:
        """Backpropagate the tail's gradient through the trunk, update the trunk's adapter, and
        return the gradient with respect to the trunk's input (for the head)."""
        ...


@dataclass
class LossResult:
    """What the server of a two-part split returns: the mean loss, the gradient for the head (training)
    and, when scoring, each row's summed negative log-likelihood and labelled tokens."""

    loss: float
    grad: torch.Tensor | None = None
    row_nll: torch.Tensor | None = None
    row_tokens: torch.Tensor | None = None


@runtime_checkable
class LossEndpoint(Protocol):
    """The server side of a two-part split: everything after the client's head, the loss included."""

    def loss(self, client_id: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
             labels: torch.Tensor, train: bool = True) -> LossResult:
        """Run the rest of the model and the loss on the head's output and the client's labels; with
        ``train``, backpropagate, step the server's adapter and return the gradient for the head."""
        ...
