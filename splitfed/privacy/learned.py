"""A learned defense at the cut: the client's trainable transform between its head and the wire.

Kinds (``privacy.learned.kind``):

* ``bottleneck``: a per-token variational information bottleneck. Training adds
  ``kl_weight * KL(N(mean, scale^2) || N(0, I))`` (nats per code dimension, mean over real tokens).
* ``dcor``: a deterministic code trained with ``weight * dCor(token embeddings, sent vectors)`` per
  batch (NoPeek).

Both start from the identity (or an orthogonal projection), are warmed up on public text through the
public model before federation (the trunk then already accepts what the cut sends), and may add a
local bypass from the clean head output to the tail. None of it leaves the client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from splitfed.models import HeadPart, TailPart, TrunkPart, head_token_embeddings, set_training
from splitfed.privacy.cut import Bypass, CutTransform, distance_correlation
from splitfed.privacy.settings import BottleneckSettings, DistanceCorrelationSettings
from splitfed.training.loss import causal_lm_loss

log = logging.getLogger(__name__)

LearnedSettings = BottleneckSettings | DistanceCorrelationSettings


class LearnedCut(nn.Module):
    """The transform, the optional bypass, and the extra loss of one learned defense."""

    def __init__(self, settings: LearnedSettings, hidden: int, seed: int = 0) -> None:
        super().__init__()
        width = settings.width or hidden
        if width > hidden:
            raise ValueError(f"privacy.learned.width: {width} is wider than the model's hidden size {hidden}")
        self.settings = settings
        stochastic = isinstance(settings, BottleneckSettings)
        scale = settings.initial_scale if isinstance(settings, BottleneckSettings) else 1.0
        self.transform = CutTransform(hidden, width, stochastic, scale, seed)
        self.bypass = Bypass(hidden, settings.bypass_rank, seed + 2) if settings.bypass else None
        self.generator = torch.Generator().manual_seed(seed + 1)

    @property
    def kind(self) -> str:
        return self.settings.kind

    def send(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, head: HeadPart | None = None,
             input_ids: torch.Tensor | None = None, training: bool = True,
             with_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sent, extra_loss)``: what goes to the server (before clipping and noise; it carries the
        graph back to the transform and the head), and the defense's loss term in training with
        ``with_loss`` (else None). ``head`` and ``input_ids`` are needed by ``dcor``'s loss."""
        settings = self.settings
        sample = training or (isinstance(settings, BottleneckSettings) and settings.sample_at_inference)
        sent, kl = self.transform(hidden, sample=sample, generator=self.generator)
        if not (training and with_loss):
            return sent, None
        keep = (torch.ones(hidden.shape[:-1], dtype=torch.bool, device=hidden.device)
                if attention_mask is None else attention_mask.bool())
        if isinstance(settings, BottleneckSettings):
            if kl is None or settings.kl_weight == 0:
                return sent, None
            return sent, settings.kl_weight * kl[keep].mean()
        if settings.weight == 0:
            return sent, None
        if head is None or input_ids is None:
            raise ValueError("the dcor defense needs the head and the input ids in training")
        embedded = head_token_embeddings(head, input_ids.to(head.device)).to(sent.device)
        inputs, outputs = embedded[keep], sent[keep]
        if inputs.shape[0] > settings.max_tokens:
            pick = torch.randperm(inputs.shape[0], generator=self.generator)[:settings.max_tokens]
            inputs, outputs = inputs[pick], outputs[pick]
        if inputs.shape[0] < 2:
            return sent, None
        return sent, settings.weight * distance_correlation(inputs, outputs)

    def bypass_output(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The bypass's contribution to the tail's input (None without a bypass)."""
        if self.bypass is None:
            return None
        return self.bypass(self.transform.standardise(hidden)).to(hidden.dtype)


@torch.no_grad()
def _head_outputs(head: HeadPart, ids: torch.Tensor, mask: torch.Tensor, batch: int = 16) -> torch.Tensor:
    set_training(head, False)
    return torch.cat([head(ids[i:i + batch], mask[i:i + batch]) for i in range(0, ids.shape[0], batch)])


def warm_up(cut: LearnedCut, head: HeadPart, trunk: TrunkPart, tail: TailPart,
            public_ids: torch.Tensor, public_mask: torch.Tensor, seed: int = 0,
            on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Calibrate the cut's standardisation on the public head outputs, then train the transform and the
    bypass, if any (``warmup_steps`` AdamW steps), on next-token loss over public text through head,
    cut, trunk (+ bypass) and tail as they are (the public model: nothing else changes), plus the
    defense's loss. With a bypass, the warm-up already learns what the client can carry itself.

    Returns the LM losses. Every other parameter is left untouched, gradients included."""
    settings = cut.settings
    cut_device = cut.transform.mean.device  # may differ from the model's (an attacker's copy on the CPU)
    hidden = _head_outputs(head, public_ids, public_mask).to(cut_device)
    cut.transform.calibrate(hidden, public_mask.to(cut_device))
    if settings.warmup_steps == 0:
        return []
    params = [p for p in cut.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.warmup_lr)
    generator = torch.Generator().manual_seed(seed)
    for part in (trunk, tail):
        set_training(part, False)
    losses: list[float] = []
    totals: list[float] = []  # with the defense's own loss: what the warm-up minimises
    labels = public_ids.masked_fill(public_mask == 0, -100)
    for step in range(settings.warmup_steps):
        rows = torch.randint(public_ids.shape[0], (min(settings.warmup_batch_size, public_ids.shape[0]),),
                             generator=generator)
        mask = public_mask[rows]
        sent, extra = cut.send(hidden[rows], mask.to(cut_device), head, public_ids[rows], training=True)
        tail_in = trunk(sent, mask)
        bypass = cut.bypass_output(hidden[rows])
        if bypass is not None:
            tail_in = tail_in + bypass.to(tail_in.device)
        loss = causal_lm_loss(tail(tail_in, mask), labels[rows])
        total = loss if extra is None else loss + extra.to(loss.device)
        grads = torch.autograd.grad(total, params, allow_unused=True)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        totals.append(float(total.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    log.info("learned defense (%s): warm-up of %d steps on public text, LM loss %.3f -> %.3f", cut.kind,
             settings.warmup_steps, losses[0], losses[-1])
    if warm_up_diverged(totals):
        log.warning("learned defense (%s): the warm-up raised its loss on public text (first steps %.2f, "
                    "last steps %.2f) instead of lowering it: lower privacy.learned.warmup_lr (%g)",
                    cut.kind, *_ends(totals), settings.warmup_lr)
    return losses


def _ends(losses: list[float], steps: int = 5) -> tuple[float, float]:
    window = max(1, min(steps, len(losses) // 2))
    return sum(losses[:window]) / window, sum(losses[-window:]) / window


def warm_up_diverged(losses: list[float], tolerance: float = 1.25) -> bool:
    """Whether a warm-up ended with a clearly higher loss than it began with (mean of the last steps
    above ``tolerance`` x the mean of the first): a learning rate too high for the cut. (The LM loss
    alone may rise by design: a strong bottleneck trades it for its KL term.)"""
    if len(losses) < 2:
        return False
    first, last = _ends(losses)
    return last > tolerance * first


CUT_FILE = "cut.safetensors"


def save_cut(cut: LearnedCut, directory: Path) -> Path:
    """Write the cut's weights (safetensors) and its settings (JSON) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in cut.state_dict().items()}
    save_file(state, directory / CUT_FILE)
    (directory / "settings.json").write_text(json.dumps(cut.settings.model_dump(mode="json"), indent=2))
    return directory / CUT_FILE


def load_cut(cut: LearnedCut, directory: Path) -> bool:
    """Load weights written by :func:`save_cut`; False when ``directory`` has none. Refuses weights of
    another kind or shape with a message naming the file."""
    path = directory / CUT_FILE
    if not path.is_file():
        return False
    state = load_file(path)
    expected = cut.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"{path} holds another learned defense than privacy.learned configures "
                         f"({cut.kind}, width {cut.transform.encode.out_features})")
    cut.load_state_dict(state)
    return True
