"""The defense one client runs: clip and noise what it sends, count the privacy it spends."""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

import torch

from splitfed.privacy.accountant import PrivacyAccountant, noise_multiplier_for
from splitfed.privacy.learned import LearnedCut
from splitfed.privacy.mechanism import ClippedGaussian
from splitfed.privacy.settings import PrivacySettings

log = logging.getLogger(__name__)

CHANNELS = ("forward", "backward")


class PrivacyBudgetExhausted(RuntimeError):
    """The next step would spend more than the privacy budget (``on_budget_exhausted: stop``)."""


class SplitDefense:
    """Clipped Gaussian mechanisms on the forward and backward channels, with an opacus accountant,
    and optionally a learned defense at the cut (``cut``) applied before them.

    Accounting (adjacency: one example replaced; no subsampling amplification):

    * forward: the head processes rows independently, so one release changes at most the n token
      vectors of that example: L2 sensitivity 2 C sqrt(n), n = the batch's longest example;
    * backward: the loss is averaged over the batch's labelled tokens, so one example can rescale
      every row's gradient: sensitivity 2 C sqrt(N), N = all real tokens of the batch;
    * ``unit=token``: sensitivity 2 C (one token's vector; valid only at head=0).

    Without ``steps_per_epoch`` every step counts as a release of every example (a safe upper bound).
    With it (batches are drawn without replacement, epoch by epoch, as ``shuffled_batches`` does), an
    example is released at most once per epoch and channel, with the epoch's smallest noise multiplier.
    ``planned_steps`` is needed to calibrate sigma from ``target_epsilon``; ``batch_size`` then bounds N.
    """

    def __init__(self, settings: PrivacySettings, planned_steps: int | None = None,
                 steps_per_epoch: int | None = None, batch_size: int = 1,
                 hidden_size: int | None = None) -> None:
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.settings = settings
        self.steps_per_epoch = steps_per_epoch
        seed = settings.seed if settings.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.accountant = PrivacyAccountant(settings.delta, settings.accountant)
        protected = [name for name in CHANNELS if getattr(settings, name).protected]
        z: float | None = None
        if settings.target_epsilon is not None:
            if planned_steps is None or planned_steps < 1:
                raise ValueError("calibrating sigma from target_epsilon needs the planned number of steps")
            rounds = planned_steps if steps_per_epoch is None else -(-planned_steps // steps_per_epoch)
            z = noise_multiplier_for(settings.target_epsilon, settings.delta, rounds * len(protected),
                                     settings.accountant)
        planned_tokens = {"forward": settings.max_tokens, "backward": settings.max_tokens * batch_size}
        self.mechanisms: dict[str, ClippedGaussian | None] = {}
        for name in CHANNELS:
            channel = getattr(settings, name)
            if channel.clip is None:
                self.mechanisms[name] = None
                continue
            sigma = channel.sigma if channel.sigma is not None else z * self._scale(planned_tokens[name])
            self.mechanisms[name] = ClippedGaussian(channel.clip, float(sigma), self.generator)
        self.cut: LearnedCut | None = None
        if settings.learned is not None:
            if hidden_size is None:
                raise ValueError("privacy.learned needs the model's hidden size")
            self.cut = LearnedCut(settings.learned, hidden_size, seed)
        self.steps = 0
        self._pending: dict[str, float] = {}  # smallest multiplier per channel in the open epoch
        self._warned = False
        log.info("privacy defense: %s; delta=%g, unit=%s, %s accountant", self.describe(), settings.delta,
                 settings.unit, settings.accountant)

    # -- accounting ---------------------------------------------------------------------------------
    def _scale(self, tokens: int) -> float:
        """A release's L2 sensitivity in units of C."""
        return 2.0 * (math.sqrt(tokens) if self.settings.unit == "example" else 1.0)

    def sigma(self, channel: str) -> float | None:
        mechanism = self.mechanisms[channel]
        return None if mechanism is None else mechanism.sigma

    def _step_multipliers(self, attention_mask: torch.Tensor | None, length: int) -> dict[str, float]:
        """Opacus noise multipliers of one step's releases (0 for a channel sent in the clear)."""
        if attention_mask is None:
            longest, total = length, length
        else:
            per_row = attention_mask.sum(dim=-1)
            longest, total = max(1, int(per_row.max())), max(1, int(per_row.sum()))
        tokens = {"forward": longest, "backward": total}
        return {name: (m.sigma / self._scale(tokens[name])) if m is not None else 0.0
                for name, m in self.mechanisms.items()}

    def _pending_after(self, step: dict[str, float]) -> dict[str, float]:
        return {name: min(z, self._pending.get(name, math.inf)) for name, z in step.items()}

    def _epsilon_with(self, pending: dict[str, float]) -> float:
        return self.accountant.epsilon([(z, 1) for z in pending.values()])

    @property
    def epsilon(self) -> float:
        return self._epsilon_with(self._pending)

    def before_step(self, attention_mask: torch.Tensor | None, length: int) -> None:
        """Apply the budget rule to the step about to be sent (raise, or warn once)."""
        budget = self.settings.target_epsilon
        if budget is None:
            return
        after = self._epsilon_with(self._pending_after(self._step_multipliers(attention_mask, length)))
        if after <= budget:
            return
        message = (f"privacy budget exhausted: step {self.steps + 1} would bring epsilon to {after:.3g} "
                   f"> target {budget:g} at delta={self.settings.delta:g}")
        if self.settings.on_budget_exhausted == "stop":
            raise PrivacyBudgetExhausted(message)
        if not self._warned:
            log.warning("%s; continuing (on_budget_exhausted=warn)", message)
            self._warned = True

    def record_step(self, attention_mask: torch.Tensor | None, length: int) -> None:
        """Count one training step's releases."""
        self._pending = self._pending_after(self._step_multipliers(attention_mask, length))
        self.steps += 1
        if self.steps_per_epoch is None or self.steps % self.steps_per_epoch == 0:
            for z in self._pending.values():
                self.accountant.record(z)
            self._pending = {}

    # -- mechanisms ---------------------------------------------------------------------------------
    def protect(self, channel: str, x: torch.Tensor) -> torch.Tensor:
        """What leaves the client on ``channel``: a new tensor; ``x`` is never modified."""
        mechanism = self.mechanisms[channel]
        return x.detach().clone() if mechanism is None else mechanism(x)

    # -- reporting and checkpoints ------------------------------------------------------------------
    def describe(self) -> str:
        text = ", ".join(f"{name}: clear" if m is None else f"{name}: C={m.clip:g} sigma={m.sigma:.4g}"
                         for name, m in self.mechanisms.items())
        if self.cut is not None:
            text = f"learned {self.cut.kind} at the cut, then {text}"
        return text

    def report(self) -> dict[str, Any]:
        """Plain numbers for progress files, logs and results (epsilon ``"inf"`` when unbounded)."""
        epsilon = self.epsilon
        return {
            "epsilon": epsilon if math.isfinite(epsilon) else "inf",
            "delta": self.settings.delta,
            "unit": self.settings.unit,
            "accountant": self.settings.accountant,
            "steps": self.steps,
            "releases": self.accountant.releases + len(self._pending),
            "target_epsilon": self.settings.target_epsilon,
            "unprotected_channels": [n for n, m in self.mechanisms.items() if m is None],
            **{f"{n}_sigma": self.sigma(n) for n in CHANNELS},
            **{f"{n}_clip": None if m is None else m.clip for n, m in self.mechanisms.items()},
            "learned": None if self.settings.learned is None else self.settings.learned.model_dump(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "accountant": self.accountant.state_dict(),
                "pending": dict(self._pending), "sigmas": {n: self.sigma(n) for n in CHANNELS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["sigmas"] != {n: self.sigma(n) for n in CHANNELS}:
            raise ValueError(f"checkpoint was written with sigmas {state['sigmas']}, this defense uses "
                             f"{ {n: self.sigma(n) for n in CHANNELS} }")
        self.accountant.load_state_dict(state["accountant"])
        self.steps = int(state["steps"])
        self._pending = {str(k): float(v) for k, v in state.get("pending", {}).items()}


@torch.no_grad()
def inference_send(defense: SplitDefense | None, clean: torch.Tensor,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
    """What a client's inference (scoring, generation) sends for the head output ``clean``."""
    if defense is None:
        return clean
    hidden = clean
    if defense.cut is not None:
        defense.cut.eval()
        hidden, _ = defense.cut.send(clean, attention_mask, training=False)
    if defense.settings.protect_inference:
        hidden = defense.protect("forward", hidden)
    return hidden


def format_epsilon(report: dict[str, Any]) -> str:
    """``eps=3.2 (delta=1e-05)`` for progress bars and logs."""
    epsilon = report["epsilon"]
    text = "inf" if epsilon == "inf" else f"{epsilon:.3g}"
    return f"eps={text} (delta={report['delta']:g})"
