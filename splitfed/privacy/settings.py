"""Typed settings of the client-side defense: per-token clipping, Gaussian noise, accounting."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitfed.privacy.accountant import AccountantKind


class ChannelSettings(BaseModel):
    """Clipping and noise on one channel the client sends to the server."""

    model_config = ConfigDict(extra="forbid")
    clip: float | None = Field(None, gt=0, description="per-token L2 clip norm C; unset: sent as is "
                                                        "(unprotected: epsilon is infinite)")
    sigma: float | None = Field(None, ge=0, description="noise multiplier: noise N(0, sigma^2 C^2) per "
                                                        "coordinate; unset: calibrated from target_epsilon")

    @property
    def protected(self) -> bool:
        return self.clip is not None


class PrivacySettings(BaseModel):
    """The defense a client applies before anything leaves it, and how its privacy is accounted.

    ``forward`` is the head's output (client -> trunk), ``backward`` the tail's gradient
    (client -> trunk). The accountant composes every release of every example at sample rate 1.
    Adjacency: one example replaced, so one release has L2 sensitivity 2 C sqrt(n) for an example of
    n tokens (``unit=example``), or 2 C for ``unit=token`` (one token's vector; a valid guarantee only
    at head=0, where a vector depends on its own token alone).
    """

    model_config = ConfigDict(extra="forbid")
    forward: ChannelSettings = ChannelSettings()
    backward: ChannelSettings = ChannelSettings()
    target_epsilon: float | None = Field(None, gt=0, description="privacy budget; sigmas left unset "
                                         "are calibrated to spend it over the planned steps")
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: AccountantKind = "rdp"
    unit: Literal["example", "token"] = "example"
    max_tokens: int = Field(256, ge=1, description="tokens per example assumed when calibrating sigma "
                                                   "(unit=example); longer batches spend more")
    on_budget_exhausted: Literal["stop", "warn"] = "stop"
    protect_inference: bool = Field(True, description="also clip and noise the hidden states of "
                                                      "inference (not counted in the training epsilon)")
    seed: int | None = Field(None, description="seed of the noise (tests, experiments); unset: random")

    @model_validator(mode="after")
    def _consistent(self) -> PrivacySettings:
        for name in ("forward", "backward"):
            channel: ChannelSettings = getattr(self, name)
            if channel.sigma is not None and channel.clip is None:
                raise ValueError(f"privacy.{name}.sigma is set but privacy.{name}.clip is not: "
                                 "noise is scaled by the clip norm")
            if channel.sigma is None and channel.clip is not None and self.target_epsilon is None:
                raise ValueError(f"privacy.{name}: set sigma, or set privacy.target_epsilon to calibrate it")
            if self.target_epsilon is not None and not channel.protected:
                raise ValueError(f"privacy.target_epsilon needs privacy.{name}.clip: an unclipped "
                                 "channel has no finite epsilon")
        return self

    @property
    def enabled(self) -> bool:
        return self.forward.protected or self.backward.protected
