"""The seams between a client and the trunk, and the errors that cross them.

A client's training talks to "the trunk" only through ``TrunkEndpoint`` (three-part) or
``LossEndpoint`` (two-part), and its generation only through ``GenerationEndpoint``. The in-process
implementations are ``splitfed.server.LocalTrunk`` and ``splitfed.inference.LocalGeneration``; the
network one is ``splitfed.client.remote_trunk.RemoteTrunk``. The server side of the wire is
``splitfed.transport.server.TrunkHandler``.
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


MICRO_BATCHES_MAX = 64  # the most micro-batches one training step may be sent in


@dataclass(frozen=True)
class MicroBatch:
    """Micro-batch ``index`` of ``count`` in one training step. The trunk keeps every micro-batch's graph
    until its backward, accumulates their gradients and steps its adapter once, after the last backward:
    the step equals one step on the whole batch when the client scales each micro-batch's loss by its
    share of the labelled tokens."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"micro-batch {self.index} of {self.count}: need 0 <= index < count")


def micro_kwargs(micro: MicroBatch | None) -> dict[str, MicroBatch]:
    """``micro=`` for an endpoint a wrapper passes a call on to, only when set (so that an endpoint without
    micro-batches is called as before)."""
    return {} if micro is None else {"micro": micro}


@runtime_checkable
class MicroBatchEndpoint(Protocol):
    """A ``TrunkEndpoint`` whose ``forward`` and ``backward`` take ``micro=MicroBatch``: a step may be
    several forwards then their backwards, so that transfer and server compute overlap the client's."""

    accepts_micro_batches: bool

    def forward(self, client_id: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                train: bool = True, labelled_tokens: int = 0,
                micro: MicroBatch | None = None) -> torch.Tensor: ...

    def backward(self, client_id: str, grad_output: torch.Tensor,
                 micro: MicroBatch | None = None) -> torch.Tensor: ...


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



class StaleCacheError(RuntimeError):
    """The trunk no longer holds this generation stream's cache (expired, evicted, released): the
    client starts the stream over by sending its whole context again."""


class GenerationEndpoint(Protocol):
    """The trunk's side of split inference, one KV cache per stream.

    ``generate_step`` runs ``hidden`` (B, new, H) through the trunk; ``attention_mask`` (B, past + new)
    covers the stream's cached positions and the new ones; ``past_length`` 0 starts the stream's cache
    afresh, and one below what the stream holds drops the rest first (rejected draft tokens);
    ``use_cache`` False keeps nothing (the caller then sends the whole sequence every step).
    """

    def generate_step(self, stream: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                      past_length: int, use_cache: bool = True) -> torch.Tensor: ...

    def release_stream(self, stream: int) -> None: ...
