"""A client's side of split training: head and tail on private data, the trunk behind an endpoint."""

from __future__ import annotations

import torch

from splitfed.client.micro_batches import MicroBatchPipeline
from splitfed.client.wire import ErrorFeedback
from splitfed.endpoints import TrunkEndpoint
from splitfed.layout import Layout
from splitfed.models import HeadPart, TailPart, adapter_state, load_adapter_state, set_training
from splitfed.privacy import SplitDefense, inference_send
from splitfed.training.data import Batch
from splitfed.training.loss import causal_lm_loss, labelled_tokens
from splitfed.training.optim import OptimizerSettings


class SplitClient:
    """Runs the split training step: head -> trunk -> tail and loss -> backward across both
    boundaries -> optimizer step on the head and tail adapters. Labels and logits never leave it.

    With a ``defense``, the head's output and the tail's gradient are clipped per token and noised
    before they are handed to the trunk endpoint (which encrypts them); the client's own copies,
    used for its head backward and its loss, stay exact. With ``feedback``, the gradient handed to the
    endpoint (after the defense) also carries each example's last quantization error (error feedback).
    With ``micro_batches`` > 1, a step's rows go to the trunk in that many micro-batches, pipelined so
    that the head and tail compute while other micro-batches travel and the trunk computes; the step
    equals the whole-batch step (``splitfed.client.micro_batches``).
    """

    def __init__(
        self,
        client_id: str,
        head: HeadPart,
        tail: TailPart,
        trunk: TrunkEndpoint,
        optimizer: OptimizerSettings | None = None,
        defense: SplitDefense | None = None,
        feedback: ErrorFeedback | None = None,
        micro_batches: int = 1,
    ) -> None:
        self.client_id = client_id
        self.head = head
        self.tail = tail
        self.trunk = trunk
        settings = optimizer or OptimizerSettings()
        params = [p for part in (head, tail) for p in part.parameters() if p.requires_grad]
        self.optimizer = settings.build(dict.fromkeys(params))  # tied weights once
        self.samples_seen = 0
        self.defense = defense
        self.feedback = feedback
        self.cut = None if defense is None else defense.cut
        self._check_defense()
        self.cut_optimizer = None
        if self.cut is not None:  # the learned defense trains with the client, at its own lr if set
            lr = self.cut.settings.lr or settings.lr
            self.cut_optimizer = settings.model_copy(update={"lr": lr}).build(self.cut.parameters())
        if micro_batches != 1 and not self.takes_micro_batches:
            raise ValueError(f"a {self.layout} client sends a step in one message: set micro_batches: 1")
        self.pipeline = None if micro_batches == 1 else MicroBatchPipeline(self, micro_batches)

    layout: Layout = Layout.THREE_PART
    takes_micro_batches = True

    @property
    def device(self) -> torch.device:
        """Where the head and tail compute (``device`` setting); batches and the trunk's answers move here."""
        return next(self.head.parameters()).device

    def on_device(self, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """``tensors`` (None stays None) on the client's device."""
        device = self.device
        return tuple(None if t is None else t.to(device) for t in tensors)

    def _check_defense(self) -> None:
        """Refuse a defense this layout cannot run (the two-part client has no tail for a bypass)."""

    def train_step(self, batch: Batch) -> float:
        """One split training step on ``batch`` (input_ids, attention_mask, labels); returns the loss.
        A step that fails leaves no gradient behind (it may be repeated after a reconnect)."""
        input_ids, mask, labels = self.on_device(batch["input_ids"], batch["attention_mask"], batch["labels"])
        try:
            if self.pipeline is not None and self.pipeline.splits(labels):
                loss = self.pipeline.step(input_ids, mask, labels)
            else:
                loss = self._whole_step(input_ids, mask, labels)
        except BaseException:
            self._clear_gradients()
            raise
        self._optimizer_step()
        self.samples_seen += int(input_ids.shape[0])
        return loss

    def _whole_step(self, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> float:
        set_training(self.tail, True)
        hidden_in, cut_out, extra_loss = self._head_step(input_ids, mask)
        labelled = labelled_tokens(labels)
        hidden_out = self.trunk.forward(self.client_id, self._send("forward", cut_out.detach()), mask,
                                        train=True, labelled_tokens=labelled)
        hidden_out = hidden_out.detach().to(input_ids.device).requires_grad_(True)
        bypass = None if self.cut is None else self.cut.bypass_output(hidden_in)
        tail_in = hidden_out if bypass is None else hidden_out + bypass
        loss = causal_lm_loss(self.tail(tail_in, mask), labels)
        loss.backward(retain_graph=bypass is not None)  # the bypass shares the head's graph
        grad_out = self._send("backward", hidden_out.grad)
        if self.feedback is not None:
            grad_out = self.feedback.compensate(grad_out, input_ids, mask)
        (grad_in,) = self.on_device(self.trunk.backward(self.client_id, grad_out))
        if self.defense is not None:
            self.defense.record_step(mask, int(input_ids.shape[1]))
        self._backward_into_client(cut_out, grad_in, extra_loss)
        return float(loss.detach())

    def _head_step(self, input_ids: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The head's training forward and, with a learned defense, what the cut makes of it: (the head's
        output, what is to be sent, the defense's own loss or None). The defense's step starts here."""
        set_training(self.head, True)
        if self.defense is not None:
            self.defense.before_step(mask, int(input_ids.shape[1]))
        hidden_in = self.head(input_ids, mask)
        if self.cut is None:
            return hidden_in, hidden_in, None
        self.cut.train()
        cut_out, extra_loss = self.cut.send(hidden_in, mask, self.head, input_ids, training=True)
        return hidden_in, cut_out, extra_loss

    @staticmethod
    def _backward_into_client(sent: torch.Tensor, grad: torch.Tensor | None,
                              extra_loss: torch.Tensor | None) -> None:
        """Backpropagate the server's gradient for what was sent (and the defense's own loss) through the
        learned cut, if any, and the head."""
        pairs = []
        if grad is not None and sent.requires_grad:
            pairs.append((sent, grad))
        if extra_loss is not None and extra_loss.requires_grad:
            pairs.append((extra_loss, torch.ones_like(extra_loss)))
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])

    def _optimizer_step(self) -> None:
        for optimizer in (self.optimizer, self.cut_optimizer):
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

    def _clear_gradients(self) -> None:
        for optimizer in (self.optimizer, self.cut_optimizer):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Inference through head, trunk and tail (nothing is kept for backward)."""
        set_training(self.head, False)
        set_training(self.tail, False)
        input_ids, attention_mask = self.on_device(input_ids, attention_mask)
        clean = self.head(input_ids, attention_mask)
        hidden = self.inference_send(clean, attention_mask)
        hidden = self.trunk.forward(self.client_id, hidden, attention_mask, train=False).to(self.device)
        return self.tail(self.tail_input(hidden, clean), attention_mask)

    @torch.no_grad()
    def evaluation_loss(self, batch: Batch) -> float:
        """The loss on ``batch`` (input_ids, attention_mask, labels) without training: an eval forward
        through the trunk (the held-out check of a round's average, ``splitfed.client.self_check``)."""
        input_ids, mask, labels = self.on_device(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return float(causal_lm_loss(self.logits(input_ids, mask), labels))

    @torch.no_grad()
    def inference_send(self, clean: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """What inference sends for the head's output ``clean``: through the learned cut, if any, then
        clipped and noised when ``protect_inference`` is set."""
        return inference_send(self.defense, clean, attention_mask)

    def tail_input(self, trunk_output: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """The trunk's output plus the learned defense's local bypass of the clean head output, if any."""
        bypass = None if self.cut is None else self.cut.bypass_output(clean)
        return trunk_output if bypass is None else trunk_output + bypass

    def _send(self, channel: str, tensor: torch.Tensor) -> torch.Tensor:
        """What goes to the trunk on ``channel``: the defense's clipped, noised copy, if any."""
        return tensor if self.defense is None else self.defense.protect(channel, tensor)

    def zeroed_server(self) -> None:
        """Sanity check of a defense: from now on the tail gets zeros instead of the trunk's output
        (only the local bypass, if any, carries information), in inference only."""
        self.trunk = _ZeroTrunk(self.trunk)

    def adapter_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """The client's head and tail adapter weights (peft keys)."""
        return {"head": adapter_state(self.head), "tail": adapter_state(self.tail)}

    def load_adapter_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        load_adapter_state(self.head, states["head"])
        load_adapter_state(self.tail, states["tail"])


class _ZeroTrunk:
    """A trunk endpoint whose inference output is all zeros (the zeroed-server sanity check)."""

    def __init__(self, trunk: TrunkEndpoint) -> None:
        self.inner = trunk

    def forward(self, client_id: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                train: bool = True, labelled_tokens: int = 0) -> torch.Tensor:
        if train:
            raise RuntimeError("the zeroed server is for evaluation only")
        return torch.zeros_like(hidden)

    def backward(self, client_id: str, grad_output: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the zeroed server is for evaluation only")

