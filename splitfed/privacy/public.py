"""A learned defense's warm-up on the public text shipped with splitfed."""

from __future__ import annotations

from typing import Any

import torch

from splitfed.models import SplitModel
from splitfed.privacy.learned import LearnedCut, LearnedSettings, warm_up
from splitfed.tasks.public_text import public_chunks


def warm_up_text(settings: LearnedSettings, tokenizer: Any) -> dict[str, torch.Tensor]:
    """The public rows a learned defense with ``settings`` warms up on (the same for every client)."""
    tokens = max(2048, settings.warmup_steps * settings.warmup_batch_size * settings.warmup_tokens)
    return public_chunks(tokenizer, tokens=tokens, length=settings.warmup_tokens)


def warm_up_on_public_text(cut: LearnedCut, split: SplitModel, tokenizer: Any, seed: int) -> list[float]:
    """Warm ``cut`` up on :func:`warm_up_text` through ``split``'s parts as they are (the public model;
    the trunk part is the client's own copy of the public weights)."""
    public = warm_up_text(cut.settings, tokenizer)
    return warm_up(cut, split.head, split.trunk, split.tail, public["input_ids"], public["attention_mask"],
                   seed=seed)
