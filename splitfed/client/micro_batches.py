"""A training step in micro-batches, pipelined so that transfer and trunk compute overlap the client's.

The step's rows are split into ``count`` micro-batches. One sender thread talks to the trunk, in this
order: forward 0, forward 1, backward 0, forward 2, backward 1, ... While the trunk (and the link)
carries micro-batch k, the client computes the head of k + 1 and the tail of k - 1; the trunk holds at
most two micro-batches' graphs at a time, accumulates their gradients and steps once, after the last
backward. Each micro-batch's loss is weighted by its share of the step's labelled tokens, so the summed
gradients, of the client's adapters and the trunk's alike, are those of the whole-batch step.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

import torch

from splitfed.endpoints import MicroBatch, MicroBatchEndpoint
from splitfed.models import set_training
from splitfed.training.loss import causal_lm_loss, labelled_tokens


class PipelinedClient(Protocol):
    """What the pipeline needs of the client whose step it runs (``SplitClient`` is one)."""

    client_id: str
    head: Any
    tail: Any
    trunk: Any
    defense: Any
    feedback: Any

    def on_device(self, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]: ...


class MicroBatchPipeline:
    """Runs a client's training step in ``count`` pipelined micro-batches."""

    def __init__(self, client: PipelinedClient, count: int) -> None:
        if count < 1:
            raise ValueError(f"micro_batches must be >= 1, not {count}")
        if client.defense is not None:
            raise ValueError("micro_batches > 1 cannot be combined with a privacy defense: its clipping, "
                             "noise and accounting are per step; set micro_batches: 1")
        self.client = client
        self.count = count
        self._sender: ThreadPoolExecutor | None = None

    def splits(self, labels: torch.Tensor) -> bool:
        """Whether this batch is split: more than one row and some labelled token."""
        return labels.shape[0] > 1 and labelled_tokens(labels) > 0

    def _send(self, function: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> Future:
        """``function(*args, **kwargs)`` on the sender thread, after everything sent before it."""
        if self._sender is None:
            self._sender = ThreadPoolExecutor(1, thread_name_prefix="splitfed-micro")
        return self._sender.submit(function, *args, **kwargs)

    def step(self, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> float:
        """Forward and backward of the whole step (the caller steps the optimizers); returns its loss."""
        client = self.client
        trunk = client.trunk
        if not isinstance(trunk, MicroBatchEndpoint) or not trunk.accepts_micro_batches:
            raise ValueError(f"micro_batches > 1: the trunk endpoint {type(trunk).__name__} takes a step in "
                             "one forward only; set micro_batches: 1")
        rows = [r for r in torch.arange(input_ids.shape[0]).tensor_split(self.count) if len(r)]
        parts = [(input_ids[r], mask[r], labels[r]) for r in rows]
        count, total = len(parts), labelled_tokens(labels)
        set_training(client.head, True)
        set_training(client.tail, True)
        heads: list[torch.Tensor] = []
        forwards: list[Future] = []
        backwards: list[Future] = []

        def send_forward(k: int) -> None:
            ids, part_mask, part_labels = parts[k]
            heads.append(client.head(ids, part_mask))
            forwards.append(self._send(trunk.forward, client.client_id, heads[k].detach(), part_mask,
                                       True, labelled_tokens(part_labels), micro=MicroBatch(k, count)))

        def finish_head(k: int) -> None:
            (grad_in,) = client.on_device(backwards[k].result())
            heads[k].backward(grad_in)

        loss = 0.0
        try:
            send_forward(0)
            for k, (ids, part_mask, part_labels) in enumerate(parts):
                if k + 1 < count:
                    send_forward(k + 1)
                output = forwards[k].result().detach().to(ids.device).requires_grad_(True)
                share = labelled_tokens(part_labels) / total
                if share > 0:
                    part_loss = causal_lm_loss(client.tail(output, part_mask), part_labels)
                    (part_loss * share).backward()
                    loss += float(part_loss.detach()) * share
                    grad = output.grad
                else:  # nothing labelled in these rows: no loss, a zero gradient for the trunk
                    grad = torch.zeros_like(output)
                if client.feedback is not None:
                    grad = client.feedback.compensate(grad, ids, part_mask)
                micro = MicroBatch(k, count)
                backwards.append(self._send(trunk.backward, client.client_id, grad, micro=micro))
                if k > 0:
                    finish_head(k - 1)
            finish_head(count - 1)
        finally:
            wait([*forwards, *backwards])  # nothing of this step is still running when it returns
        return loss
