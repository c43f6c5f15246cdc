"""What a client's gradient may do to the shared trunk: checked before it is backpropagated.

Every backward's gradient must be finite, and its size is bounded relative to what the federation's
clients have sent: the statistic is the gradient's norm times the square root of its positions (rows x
tokens), which for a loss averaged over tokens hardly depends on the batch's shape (measured on SmolLM2:
0.12-0.18 over batches of 1-8 rows and 16-64 tokens, where the plain norm spans 8x). Why bound the size
at all: AdamW's second moment keeps (1 - beta2) x g**2 of one gradient for thousands of steps, so a
single gradient 1e4 x an honest one divides the adapter's steps by ~300 long after it was sent, and
early in training (AdamW's bias correction) even one 5 x an honest one halves them for a while: hence
scaled to the median, not merely to the bound.

Above ``norm_ratio`` x the median of the last ``window`` accepted statistics (the very first gradient: above
``warmup_max``, which also caps the bound until ``min_samples`` were accepted), a gradient is scaled
down to the median (in the warm-up: to the bound), or refused. A refused backward, or one
clipped after the warm-up, is a strike; a client with ``strikes_to_suspend`` strikes among its last
``strike_window`` backwards is suspended for ``suspend_s``: its requests are refused while the others
train on.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class GradientGuardSettings(BaseModel):
    """How the server bounds the gradients clients send to the trunk."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["clip", "refuse"] = Field("clip", description="a gradient over the bound: scale it "
                                              "down to the median of recent gradients, or refuse the step "
                                              "(non-finite: always refused)")
    norm_ratio: float = Field(5.0, gt=1, description="the bound: this many times the median of recent "
                              "accepted gradients (norm x sqrt(positions))")
    warmup_max: float = Field(100.0, gt=0, description="the bound of the very first gradient, and the "
                              "most the bound may be until min_samples were accepted (honest gradients "
                              "measured 0.12-0.18 on SmolLM2, 4-50 on the random tiny test models; a "
                              "warm-up clip is no strike)")
    min_samples: int = Field(4, ge=1, description="accepted gradients before the median sets the bound")
    window: int = Field(256, ge=8, description="recent accepted gradients the median is taken over")
    strikes_to_suspend: int = Field(8, ge=1, description="refused or clipped backwards, among a client's "
                                    "last strike_window, that suspend it")
    strike_window: int = Field(32, ge=1, description="a client's recent backwards its strikes count over")
    suspend_s: float = Field(600.0, gt=0, description="how long a suspended client's requests are refused")


class GradientRefused(ValueError):
    """A client's gradient the trunk will not backpropagate (``code``: not_finite, gradient_norm)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Record:
    recent: deque = field(default_factory=deque)  # True: a strike
    suspended_until: float = 0.0
    strikes: int = 0  # in all


def gradient_statistic(grad: torch.Tensor) -> float:
    """The gradient's norm times the square root of its positions (rows x tokens)."""
    positions = max(1, math.prod(grad.shape[:-1]))
    return float(grad.detach().double().norm()) * math.sqrt(positions)


class GradientGuard:
    """Checks and bounds every backward's gradient; counts strikes and suspends (thread-safe). Without
    settings (a ``TrunkService`` built by hand, as in tests of the exact honest path) only non-finite
    gradients are refused; ``splitfed serve`` always passes its settings, so the bound is on there."""

    def __init__(self, settings: GradientGuardSettings | None = None) -> None:
        self.bounded = settings is not None
        self.settings = settings or GradientGuardSettings()
        self._accepted: deque[float] = deque(maxlen=self.settings.window)
        self._clients: dict[str, _Record] = {}
        self._lock = threading.Lock()
        self.clipped = 0
        self.refused = 0

    def bound(self) -> float:
        """The largest statistic a gradient may have now."""
        with self._lock:
            return self._bound()

    def _bound(self) -> float:
        if not self._accepted:
            return self.settings.warmup_max
        relative = self.settings.norm_ratio * statistics.median(self._accepted)
        if len(self._accepted) < self.settings.min_samples:
            return min(self.settings.warmup_max, relative)
        return relative

    def check(self, client: str, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` if it is within the bound; else scaled down to the median of recent gradients
        (action clip; in the warm-up: to ``warmup_max``), or ``GradientRefused``."""
        if not bool(torch.isfinite(grad).all()):
            self._strike(client, refused=True)
            raise GradientRefused("not_finite", "the gradient holds NaN or infinite values")
        if not self.bounded:
            return grad
        value = gradient_statistic(grad)
        with self._lock:
            bound = self._bound()
            warming_up = len(self._accepted) < self.settings.min_samples
            target = bound if warming_up else statistics.median(self._accepted)
        if value <= bound:
            with self._lock:
                self._accepted.append(value)
            self._strike(client, strike=False)
            return grad
        if self.settings.action == "refuse":
            self._strike(client, refused=True)
            raise GradientRefused("gradient_norm", f"the gradient's size {value:.3g} (norm x "
                                  f"sqrt(positions)) exceeds the bound {bound:.3g} "
                                  f"({self.settings.norm_ratio:g} x the median of recent gradients)")
        with self._lock:
            self._accepted.append(target)  # what it was scaled to: one client cannot drag the median
        # a warm-up clip is no strike: the first bound is a guess, and honest clients must not pay for it
        self._strike(client, strike=not warming_up, clipped=True)
        return (grad.double() * (target / value)).to(grad.dtype)

    def _strike(self, client: str, strike: bool = True, refused: bool = False, clipped: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            record = self._clients.setdefault(client, _Record())
            record.recent.append(strike)
            while len(record.recent) > self.settings.strike_window:
                record.recent.popleft()
            self.refused += refused
            self.clipped += clipped
            if not strike:
                return
            record.strikes += 1
            if sum(record.recent) >= self.settings.strikes_to_suspend and record.suspended_until <= now:
                record.suspended_until = now + self.settings.suspend_s
                record.recent.clear()
                log.warning("client %s suspended for %.0fs: %d of its last %d gradients were refused or "
                            "clipped", client, self.settings.suspend_s, self.settings.strikes_to_suspend,
                            self.settings.strike_window)

    def suspended_for(self, client: str) -> float:
        """Seconds ``client`` stays suspended (0: it is not)."""
        with self._lock:
            record = self._clients.get(client)
            return max(0.0, record.suspended_until - time.monotonic()) if record else 0.0

    def status(self) -> dict:
        """Bound, refusals, clips, and the clients suspended now (for ``splitfed status``)."""
        with self._lock:
            now = time.monotonic()
            suspended = {name: round(r.suspended_until - now, 1) for name, r in self._clients.items()
                         if r.suspended_until > now}
            return {"gradient_bound": round(self._bound(), 6), "gradients_refused": self.refused,
                    "gradients_clipped": self.clipped, "suspended_for_gradients": suspended}
