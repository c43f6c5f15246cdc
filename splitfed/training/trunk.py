"""What a client needs from "the trunk": the seam where the network transport plugs in.

The in-process implementation is ``splitfed.server.LocalTrunk``; a gRPC stub implements the same
protocol, so the training loop never changes.
"""

from __future__ import annotations

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
