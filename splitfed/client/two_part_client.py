"""A client of the two-part layout: it keeps only the head; the server runs the rest of the model and
the loss, so the labels leave the client (the server sees what the model is trained to predict)."""

from __future__ import annotations

import torch

from splitfed.client.split_client import SplitClient
from splitfed.endpoints import LossEndpoint
from splitfed.layout import Layout
from splitfed.models import set_training
from splitfed.training.data import Batch


class TwoPartClient(SplitClient):
    """``SplitClient`` whose step sends the head's output and the labels to a ``LossEndpoint`` and gets
    the loss and the head's gradient back. ``tail`` holds no blocks (the server has the LM head)."""

    layout = Layout.TWO_PART
    takes_micro_batches = False

    def _check_defense(self) -> None:
        if self.feedback is not None:
            raise ValueError("error feedback is for the gradient a client sends, and a two-part client "
                             "sends none")
        if self.cut is not None and self.cut.bypass is not None:
            raise ValueError("privacy.learned.bypass feeds the client's tail, and the two-part layout has "
                             "none: set bypass: false or use the three-part layout")

    def train_step(self, batch: Batch) -> float:
        input_ids, mask, labels = self.on_device(batch["input_ids"], batch["attention_mask"], batch["labels"])
        _, cut_out, extra_loss = self._head_step(input_ids, mask)
        endpoint: LossEndpoint = self.trunk  # type: ignore[assignment]
        result = endpoint.loss(self.client_id, self._send("forward", cut_out.detach()), mask, labels,
                               train=True)
        if self.defense is not None:
            self.defense.record_step(mask, int(input_ids.shape[1]))
        (grad,) = self.on_device(result.grad)
        self._backward_into_client(cut_out, grad, extra_loss)
        self._optimizer_step()
        self.samples_seen += int(input_ids.shape[0])
        return result.loss

    @torch.no_grad()
    def evaluation_loss(self, batch: Batch) -> float:
        """The server computes the loss (``train=False``: no gradient, no step)."""
        set_training(self.head, False)
        input_ids, mask, labels = self.on_device(batch["input_ids"], batch["attention_mask"], batch["labels"])
        hidden = self.inference_send(self.head(input_ids, mask), mask)
        endpoint: LossEndpoint = self.trunk  # type: ignore[assignment]
        return float(endpoint.loss(self.client_id, hidden, mask, labels, train=False).loss)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """In process only (over the network the server keeps the logits): the server's logits."""
        set_training(self.head, False)
        input_ids, attention_mask = self.on_device(input_ids, attention_mask)
        hidden = self.inference_send(self.head(input_ids, attention_mask), attention_mask)
        return self.trunk.logits(hidden, attention_mask)  # type: ignore[attr-defined]


def client_class(layout: Layout | str) -> type[SplitClient]:
    """The client of ``layout``: ``SplitClient`` (three-part) or ``TwoPartClient``."""
    return TwoPartClient if Layout(layout) == Layout.TWO_PART else SplitClient
