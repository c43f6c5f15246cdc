"""The server of a two-part split: the trunk plus the final norm and LM head, and the loss.

The client keeps only the head; it sends the head's output *and its labels*. So this server sees the
labels and computes the predictions: that is what the two-part layout exposes (a ``PrivacyWarning``
is raised when it is built, and the attack harness measures label recovery).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splitfed.endpoints import LossResult
from splitfed.models import SparseSpec, TailPart, TrunkPart
from splitfed.server.local_trunk import LocalTrunk
from splitfed.training.guarded_step import guarded_step
from splitfed.training.loss import IGNORE_INDEX, causal_lm_loss
from splitfed.training.optim import OptimizerSettings


class TwoPartTrunk(LocalTrunk):
    """``LocalTrunk`` that also runs the model's end and the loss (``LossEndpoint``)."""

    def __init__(self, trunk: TrunkPart, tail: TailPart, optimizer: OptimizerSettings | None = None,
                 sparse: SparseSpec | None = None) -> None:
        if tail.layer_indices:
            raise ValueError("a two-part server's tail holds only the final norm and LM head (tail=0)")
        super().__init__(trunk, optimizer, sparse)
        self.tail = tail
        # the LM head (and its tied embedding) stays frozen on the server unless an adapter says otherwise
        self.labels_seen = 0

    def _logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.tail(self.trunk(hidden, attention_mask), attention_mask)

    def loss(self, client_id: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
             labels: torch.Tensor, train: bool = True) -> LossResult:
        self.labels_seen += int((labels != IGNORE_INDEX).sum())
        self.trunk.train(train)
        self.tail.train(train)
        if not train:
            with torch.no_grad():
                logits = self._logits(hidden, attention_mask)
            shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
            nll = F.cross_entropy(logits.float().transpose(1, 2), shifted, ignore_index=IGNORE_INDEX,
                                  reduction="none")
            tokens = (shifted != IGNORE_INDEX).sum(-1)
            total = nll.sum()
            return LossResult(float(total / tokens.sum().clamp(min=1)), None, nll.sum(-1), tokens)
        inputs = hidden.detach().requires_grad_(True)
        if self._selecting():
            self.selection.before_forward()  # type: ignore[union-attr]
        loss = causal_lm_loss(self._logits(inputs, attention_mask), labels)
        loss.backward()
        self._after_backward()
        if self.optimizer is not None and not guarded_step(self.optimizer, "trunk adapter (two-part)"):
            self.dropped_steps += 1
        self.steps += 1
        return LossResult(float(loss.detach()), inputs.grad)

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """In-process scoring and generation: the logits the server computes from the head's output."""
        self.trunk.eval()
        self.tail.eval()
        return self._logits(hidden, attention_mask)
