"""The centralized baseline: the same model, data, steps and seeds, without splitting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from splitfed.federation.config import FederationSettings
from splitfed.models.whole import WholeModel
from splitfed.training.data import Batch, shuffled_batches
from splitfed.training.loss import causal_lm_loss
from splitfed.training.replicate import replicate


class CentralizedTrainer:
    """Fine-tunes the whole model with the federation's adapter on all the data pooled together."""

    def __init__(
        self,
        model: nn.Module,
        examples: Sequence[Any],
        collate: Callable[[list[Any]], Batch],
        settings: FederationSettings,
        initial_states: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> None:
        torch.manual_seed(settings.seed)
        self.whole = WholeModel(replicate(model), settings.adapter)
        if initial_states is not None:
            self.whole.load_part_states(initial_states)
        self.optimizer = settings.optimizer.build(self.whole.parameters())
        self.batches = shuffled_batches(examples, settings.batch_size, settings.seed, collate)

    def train_step(self) -> float:
        batch = next(self.batches)
        self.whole.train()
        logits = self.whole(batch["input_ids"], batch["attention_mask"])
        loss = causal_lm_loss(logits, batch["labels"].to(logits.device))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.whole.eval()
        return self.whole(input_ids, attention_mask)
