"""Client-batch mode over the network: gather the training forwards that arrive within a window,
run them as one batch, then gather the gradients until a deadline and take one step."""

from __future__ import annotations

import logging
import threading
import time

import torch

from splitfed.models import set_training
from splitfed.server.client_batch import BatchedTrunk, ForwardItem
from splitfed.server.compute import ComputeThread

log = logging.getLogger(__name__)


class DroppedFromStep(RuntimeError):
    """This client's gradient came after the batch's backward deadline (or its forward after the
    window closed on a batch it could not join)."""


class Batcher:
    """Coordinates the request threads of the clients of one batch at a time."""

    def __init__(self, trunk: BatchedTrunk, window_s: float = 0.05, max_rows: int = 64,
                 backward_deadline_s: float = 30.0, compute: ComputeThread | None = None) -> None:
        self.trunk = trunk
        self.compute = compute or ComputeThread()  # the batch's tensor work runs on it
        self.window_s = window_s
        self.max_rows = max_rows
        self.backward_deadline_s = backward_deadline_s
        self._condition = threading.Condition()
        self._batch = 0                      # number of the batch being collected
        self._items: list[ForwardItem] = []
        self._outputs: dict[str, torch.Tensor] = {}
        self._window_ends = 0.0
        self._phase = "collect"              # collect -> backward -> collect ...
        self._members: set[str] = set()
        self._grads: dict[str, torch.Tensor] = {}
        self._grads_in: dict[str, torch.Tensor] = {}
        self._backward_ends = 0.0
        self._done_batch = -1

    def forward(self, item: ForwardItem, timeout_s: float) -> torch.Tensor:
        """Join the batch being collected (waiting for the previous one to finish its backward);
        returns this client's output once the whole batch has run through the trunk."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while self._phase != "collect" or item.client_id in {i.client_id for i in self._items}:
                self._wait(deadline)
            if not self._items:
                self._window_ends = time.monotonic() + self.window_s
            self._items.append(item)
            my_batch = self._batch
            self._condition.notify_all()
            while self._batch == my_batch:
                rows = sum(i.hidden.shape[0] for i in self._items)
                if rows >= self.max_rows or time.monotonic() >= self._window_ends:
                    self._run_forward()
                    break
                self._condition.wait(max(0.0, min(self._window_ends - time.monotonic(), 0.5)))
                if time.monotonic() > deadline:
                    raise TimeoutError("the batch did not run in time")
            return self._outputs[item.client_id]

    def evaluate(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """An inference forward, never interleaved with the batch's training computation."""
        with self._condition:
            return self.compute.run(self._evaluate, hidden, attention_mask)

    @torch.no_grad()
    def _evaluate(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        set_training(self.trunk.trunk, False)
        return self.trunk.trunk(hidden, attention_mask)

    def backward(self, client_id: str, grad: torch.Tensor) -> torch.Tensor:
        """Hand in this client's gradient; the batch's one backward and optimizer step run when
        every member has, or at the deadline. Returns this client's input gradient."""
        with self._condition:
            if self._phase != "backward" or client_id not in self._members or client_id in self._grads:
                raise DroppedFromStep(f"{client_id} is not awaited in the current batch's backward")
            self._grads[client_id] = grad
            my_batch = self._done_batch + 1
            self._condition.notify_all()
            while self._done_batch < my_batch:
                if set(self._grads) == self._members or time.monotonic() >= self._backward_ends:
                    self._run_backward()
                    break
                self._condition.wait(max(0.0, min(self._backward_ends - time.monotonic(), 0.5)))
            if client_id not in self._grads_in:
                raise DroppedFromStep(f"{client_id} missed the backward deadline")
            return self._grads_in.pop(client_id)

    def _wait(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("waited too long for the previous batch to finish")
        if self._phase == "backward" and time.monotonic() >= self._backward_ends:
            self._run_backward()
            return
        self._condition.wait(min(remaining, 0.5))

    def _run_forward(self) -> None:
        items, self._items = self._items, []
        self._outputs = self.compute.run(self.trunk.forward, items)
        self._members = {i.client_id for i in items}
        self._grads, self._grads_in = {}, {}
        self._phase = "backward"
        self._backward_ends = time.monotonic() + self.backward_deadline_s
        self._batch += 1
        log.debug("client-batch forward of %s", sorted(self._members))
        self._condition.notify_all()

    def _run_backward(self) -> None:
        missing = sorted(self._members - set(self._grads))
        if self._grads:
            self._grads_in = self.compute.run(self.trunk.backward, self._grads)
        else:
            self.trunk.abandon()
        if missing:
            log.warning("client-batch step: %s missed the backward deadline and were dropped from it",
                        ", ".join(missing))
        self._phase = "collect"
        self._members = set()
        self._done_batch += 1
        self._condition.notify_all()
