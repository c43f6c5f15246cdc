"""A client's side of split training: head and tail on private data, the trunk behind an endpoint."""

from __future__ import annotations

import torch

from splitfed.models import HeadPart, TailPart, adapter_state, load_adapter_state, set_training
from splitfed.privacy import SplitDefense
from splitfed.training.data import Batch
from splitfed.training.loss import causal_lm_loss
from splitfed.training.optim import OptimizerSettings
from splitfed.training.trunk import LossEndpoint, TrunkEndpoint


class SplitClient:
    """Runs the split training step: head -> trunk -> tail and loss -> backward across both
    boundaries -> optimizer step on the head and tail adapters. Labels and logits never leave it.

    With a ``defense``, the head's output and the tail's gradient are clipped per token and noised
    before they are handed to the trunk endpoint (which encrypts them); the client's own copies,
    used for its head backward and its loss, stay exact.
    """

    def __init__(
        self,
        client_id: str,
        head: HeadPart,
        tail: TailPart,
        trunk: TrunkEndpoint,
        optimizer: OptimizerSettings | None = None,
        defense: SplitDefense | None = None,
        layout: str = "three-part",
    ) -> None:
        if layout not in ("three-part", "two-part"):
            raise ValueError(f"unknown layout {layout!r}")
        self.layout = layout
        self.client_id = client_id
        self.head = head
        self.tail = tail
        self.trunk = trunk
        settings = optimizer or OptimizerSettings()
        params = [p for part in (head, tail) for p in part.parameters() if p.requires_grad]
        self.optimizer = settings.build(dict.fromkeys(params))  # tied weights once
        self.samples_seen = 0
        self.defense = defense

    def train_step(self, batch: Batch) -> float:
        """One split training step on ``batch`` (input_ids, attention_mask, labels); returns the loss."""
        input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if self.layout == "two-part":
            return self._two_part_step(input_ids, mask, labels)
        set_training(self.head, True)
        set_training(self.tail, True)
        length = int(input_ids.shape[1])
        if self.defense is not None:
            self.defense.before_step(mask, length)
        hidden_in = self.head(input_ids, mask)
        labelled = int((labels[:, 1:] != -100).sum())
        hidden_out = self.trunk.forward(self.client_id, self._send("forward", hidden_in.detach()), mask,
                                        train=True, labelled_tokens=labelled)
        hidden_out = hidden_out.detach().requires_grad_(True)
        loss = causal_lm_loss(self.tail(hidden_out, mask), labels)
        loss.backward()
        grad_in = self.trunk.backward(self.client_id, self._send("backward", hidden_out.grad))
        if self.defense is not None:
            self.defense.record_step(mask, length)
        if hidden_in.requires_grad:
            hidden_in.backward(grad_in)
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.samples_seen += int(input_ids.shape[0])
        return float(loss.detach())

    def _two_part_step(self, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> float:
        """Two-part layout: the head's output and the labels go to the server, which returns the loss and
        the gradient for the head. The labels leave the client."""
        self.head.train()
        length = int(input_ids.shape[1])
        if self.defense is not None:
            self.defense.before_step(mask, length)
        hidden_in = self.head(input_ids, mask)
        endpoint: LossEndpoint = self.trunk  # type: ignore[assignment]
        result = endpoint.loss(self.client_id, self._send("forward", hidden_in.detach()), mask, labels,
                               train=True)
        if self.defense is not None:
            self.defense.record_step(mask, length)
        if hidden_in.requires_grad and result.grad is not None:
            hidden_in.backward(result.grad)
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.samples_seen += int(input_ids.shape[0])
        return result.loss

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Inference through head, trunk and tail (nothing is kept for backward)."""
        set_training(self.head, False)
        set_training(self.tail, False)
        hidden = self.head(input_ids, attention_mask)
        if self.defense is not None and self.defense.settings.protect_inference:
            hidden = self.defense.protect("forward", hidden)
        if self.layout == "two-part":  # in-process only: over the network the server keeps the logits
            return self.trunk.logits(hidden, attention_mask)  # type: ignore[attr-defined]
        hidden = self.trunk.forward(self.client_id, hidden, attention_mask, train=False)
        return self.tail(hidden, attention_mask)

    def _send(self, channel: str, tensor: torch.Tensor) -> torch.Tensor:
        """What goes to the trunk on ``channel``: the defense's clipped, noised copy, if any."""
        return tensor if self.defense is None else self.defense.protect(channel, tensor)

    def adapter_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """The client's head and tail adapter weights (peft keys)."""
        return {"head": adapter_state(self.head), "tail": adapter_state(self.tail)}

    def load_adapter_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        load_adapter_state(self.head, states["head"])
        load_adapter_state(self.tail, states["tail"])
