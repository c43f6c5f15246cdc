"""Privacy accounting with opacus: every release of an example counts (no subsampling amplification)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

AccountantKind = Literal["rdp", "prv"]


def _opacus(kind: AccountantKind) -> RDPAccountant | PRVAccountant:
    if kind == "rdp":
        return RDPAccountant()
    if kind == "prv":
        return PRVAccountant()
    raise ValueError(f"unknown accountant {kind!r}; choose rdp or prv")


def epsilon_of(history: list[tuple[float, int]], delta: float, kind: AccountantKind = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``count`` Gaussian releases per ``(noise_multiplier,
    count)``, each at sample rate 1 (the server knows who sent each batch). 0 releases: 0."""
    history = [(z, n) for z, n in history if n > 0]
    if not history:
        return 0.0
    if any(z <= 0 for z, _ in history):
        return math.inf
    accountant = _opacus(kind)
    accountant.history = [(float(z), 1.0, int(n)) for z, n in history]
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the smallest alpha": a loose bound
        return float(accountant.get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, delta: float, releases: int,
                         kind: AccountantKind = "rdp") -> float:
    """The smallest noise multiplier (opacus' search) whose ``releases``-fold composition stays
    below ``target_epsilon`` at ``delta``."""
    if target_epsilon <= 0 or releases < 1:
        raise ValueError(f"need target_epsilon > 0 and releases >= 1, got {target_epsilon}, {releases}")
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=1.0, steps=releases, accountant=kind))


class PrivacyAccountant:
    """Counts Gaussian releases by noise multiplier and turns them into epsilon at ``delta``.

    A release without noise (a channel sent in the clear) makes epsilon infinite. ``state_dict``
    holds plain numbers only, for checkpoints.
    """

    def __init__(self, delta: float, kind: AccountantKind = "rdp") -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        _opacus(kind)
        self.delta = float(delta)
        self.kind: AccountantKind = kind
        self.counts: dict[float, int] = {}

    def record(self, noise_multiplier: float, count: int = 1) -> None:
        """``count`` releases of every example with this effective noise multiplier (0: unprotected)."""
        key = float(noise_multiplier)
        self.counts[key] = self.counts.get(key, 0) + int(count)

    @property
    def releases(self) -> int:
        return sum(self.counts.values())

    def history(self) -> list[tuple[float, int]]:
        return sorted(self.counts.items())

    def epsilon(self, extra: list[tuple[float, int]] | None = None) -> float:
        """Epsilon spent so far (plus ``extra`` hypothetical releases)."""
        return epsilon_of(self.history() + list(extra or []), self.delta, self.kind)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "delta": self.delta,
                "history": [[z, n] for z, n in self.history()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind or float(state.get("delta", -1)) != self.delta:
            raise ValueError(f"accountant state is for {state.get('kind')} at delta={state.get('delta')}, "
                             f"this accountant is {self.kind} at delta={self.delta}")
        self.counts = {float(z): int(n) for z, n in state["history"]}
