"""The defense one client runs: clip and noise what it sends, count the privacy it spends."""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

import torch

from splitfed.privacy.accountant import PrivacyAccountant, noise_multiplier_for
from splitfed.privacy.mechanism import ClippedGaussian
from splitfed.privacy.settings import PrivacySettings

log = logging.getLogger(__name__)

CHANNELS = ("forward", "backward")


class PrivacyBudgetExhausted(RuntimeError):
    """The next step would spend more than the privacy budget (``on_budget_exhausted: stop``)."""


class SplitDefense:
    """Clipped Gaussian mechanisms on the forward and backward channels, with an opacus accountant.

    ``planned_steps`` (training steps of this client) is needed when a sigma is calibrated from
    ``target_epsilon``.
    """

    def __init__(self, settings: PrivacySettings, planned_steps: int | None = None) -> None:
        self.settings = settings
        seed = settings.seed if settings.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.accountant = PrivacyAccountant(settings.delta, settings.accountant)
        protected = [name for name in CHANNELS if getattr(settings, name).protected]
        calibrated: float | None = None
        if settings.target_epsilon is not None:
            if planned_steps is None or planned_steps < 1:
                raise ValueError("calibrating sigma from target_epsilon needs the planned number of steps")
            z = noise_multiplier_for(settings.target_epsilon, settings.delta,
                                     planned_steps * len(protected), settings.accountant)
            calibrated = z * self._scale(settings.max_tokens)
        self.mechanisms: dict[str, ClippedGaussian | None] = {}
        for name in CHANNELS:
            channel = getattr(settings, name)
            if channel.clip is None:
                self.mechanisms[name] = None
                continue
            sigma = channel.sigma if channel.sigma is not None else calibrated
            self.mechanisms[name] = ClippedGaussian(channel.clip, float(sigma), self.generator)
        self.steps = 0
        self._warned = False
        log.info("privacy defense: %s; delta=%g, unit=%s, %s accountant", self.describe(), settings.delta,
                 settings.unit, settings.accountant)

    # -- accounting ---------------------------------------------------------------------------------
    def _scale(self, tokens: int) -> float:
        """Noise multiplier per unit of opacus noise multiplier: the release's sensitivity over C."""
        return 2.0 * (math.sqrt(tokens) if self.settings.unit == "example" else 1.0)

    def sigma(self, channel: str) -> float | None:
        mechanism = self.mechanisms[channel]
        return None if mechanism is None else mechanism.sigma

    def _step_releases(self, tokens: int) -> list[tuple[float, int]]:
        """Opacus noise multipliers of one step's releases (0 for a channel sent in the clear)."""
        scale = self._scale(tokens)
        return [((m.sigma / scale) if m is not None else 0.0, 1) for m in self.mechanisms.values()]

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon()

    def before_step(self, attention_mask: torch.Tensor | None, length: int) -> None:
        """Apply the budget rule to the step about to be sent (raise, or warn once)."""
        budget = self.settings.target_epsilon
        if budget is None:
            return
        after = self.accountant.epsilon(self._step_releases(_tokens(attention_mask, length)))
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
        """Count one training step's releases of every example in the batch."""
        for z, count in self._step_releases(_tokens(attention_mask, length)):
            self.accountant.record(z, count)
        self.steps += 1

    # -- mechanisms ---------------------------------------------------------------------------------
    def protect(self, channel: str, x: torch.Tensor) -> torch.Tensor:
        """What leaves the client on ``channel``: a new tensor; ``x`` is never modified."""
        mechanism = self.mechanisms[channel]
        return x.detach().clone() if mechanism is None else mechanism(x)

    # -- reporting and checkpoints ------------------------------------------------------------------
    def describe(self) -> str:
        parts = []
        for name, mechanism in self.mechanisms.items():
            parts.append(f"{name}: clear" if mechanism is None
                         else f"{name}: C={mechanism.clip:g} sigma={mechanism.sigma:.4g}")
        return ", ".join(parts)

    def report(self) -> dict[str, Any]:
        """Plain numbers for progress files, logs and results."""
        epsilon = self.epsilon
        return {
            "epsilon": epsilon if math.isfinite(epsilon) else "inf",
            "delta": self.settings.delta,
            "unit": self.settings.unit,
            "accountant": self.settings.accountant,
            "steps": self.steps,
            "releases": self.accountant.releases,
            "target_epsilon": self.settings.target_epsilon,
            "unprotected_channels": [n for n, m in self.mechanisms.items() if m is None],
            **{f"{n}_sigma": self.sigma(n) for n in CHANNELS},
            **{f"{n}_clip": None if m is None else m.clip for n, m in self.mechanisms.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "accountant": self.accountant.state_dict(),
                "sigmas": {n: self.sigma(n) for n in CHANNELS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["sigmas"] != {n: self.sigma(n) for n in CHANNELS}:
            raise ValueError(f"checkpoint was written with sigmas {state['sigmas']}, this defense uses "
                             f"{ {n: self.sigma(n) for n in CHANNELS} }")
        self.accountant.load_state_dict(state["accountant"])
        self.steps = int(state["steps"])


def _tokens(attention_mask: torch.Tensor | None, length: int) -> int:
    """The longest example of the batch in real tokens (its sensitivity bounds everyone's)."""
    if attention_mask is None:
        return int(length)
    return max(1, int(attention_mask.sum(dim=-1).max()))


def format_epsilon(report: dict[str, Any]) -> str:
    """``eps=3.2 (delta=1e-05)`` for progress bars and logs."""
    epsilon = report["epsilon"]
    text = "inf" if epsilon == "inf" else f"{epsilon:.3g}"
    return f"eps={text} (delta={report['delta']:g})"
