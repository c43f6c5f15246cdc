"""Typed settings of the client-side defense: per-token clipping, Gaussian noise, accounting."""

from __future__ import annotations

from typing import Annotated, Literal

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


class LearnedCutSettings(BaseModel):
    """What every learned defense at the cut shares: a trainable transform between the head and the
    wire (``width``-dimensional code, decoded back to the model's hidden size), a warm-up on public
    text before federation, and an optional local bypass that feeds the clean head output to the tail.
    The transform and the bypass never leave the client: they are neither sent nor averaged."""

    model_config = ConfigDict(extra="forbid")
    width: int | None = Field(None, ge=1, description="dimensions of the code at the cut; unset: the "
                                                      "model's hidden size (it may not be wider)")
    warmup_steps: int = Field(40, ge=0, description="local warm-up steps of the cut on public text, "
                                                    "through the public (frozen) model, before training")
    warmup_batch_size: int = Field(8, ge=1, description="public rows per warm-up step")
    warmup_lr: float = Field(1e-3, gt=0, description="learning rate of the warm-up")
    warmup_tokens: int = Field(64, ge=8, description="tokens per public row in the warm-up")
    lr: float | None = Field(None, gt=0, description="learning rate of the cut (and bypass) during "
                                                     "training; unset: the client's optimizer lr")
    bypass: bool = Field(False, description="a local low-rank adapter from the clean head output to "
                                            "the tail's input (the tail gets trunk output + bypass)")
    bypass_rank: int = Field(16, ge=1, description="rank of the bypass adapter")


class BottleneckSettings(LearnedCutSettings):
    """Per-token variational information bottleneck (VIB; as in MID / ADMI): the encoder gives a mean
    and a scale per token, a sample z ~ N(mean, scale^2) is decoded into what crosses the wire, and
    ``kl_weight`` x KL(N(mean, scale^2) || N(0, I)) (nats per code dimension, mean over tokens) is
    added to the task loss."""

    kind: Literal["bottleneck"] = Field("bottleneck", description="selects the bottleneck")
    kl_weight: float = Field(0.01, ge=0, description="weight of the KL term (0: a plain noisy autoencoder)")
    initial_scale: float = Field(0.1, gt=0, description="the encoder's scale at initialisation, in units "
                                                        "of the code's RMS")
    sample_at_inference: bool = Field(True, description="inference and generation send a sample too "
                                                        "(false: the mean, which leaks more)")


class DistanceCorrelationSettings(LearnedCutSettings):
    """NoPeek-style decorrelation: ``weight`` x distance correlation between the tokens' input
    embeddings and what is sent, per batch, added to the task loss; the cut is deterministic."""

    kind: Literal["dcor"] = Field("dcor", description="selects distance correlation")
    weight: float = Field(1.0, ge=0, description="weight of the distance-correlation term")
    max_tokens: int = Field(256, ge=8, description="tokens sampled per batch for the (quadratic) "
                                                   "distance matrices")


LearnedDefenseSettings = Annotated[BottleneckSettings | DistanceCorrelationSettings,
                                   Field(discriminator="kind")]
LEARNED_DEFENSES = ("bottleneck", "dcor")


class PrivacySettings(BaseModel):
    """The defense a client applies before anything leaves it, and how its privacy is accounted.

    ``forward`` is the head's output (client -> trunk), ``backward`` the tail's gradient
    (client -> trunk). The accountant composes every release of every example at sample rate 1.
    Adjacency: one example replaced, so one release has L2 sensitivity 2 C sqrt(n) for an example of
    n tokens (``unit=example``), or 2 C for ``unit=token`` (one token's vector; a valid guarantee only
    at head=0, where a vector depends on its own token alone).
    """

    model_config = ConfigDict(extra="forbid")
    forward: ChannelSettings = Field(ChannelSettings(), description="the head's output, client -> trunk")
    backward: ChannelSettings = Field(ChannelSettings(), description="the tail's input gradient, client -> "
                                                                     "trunk")
    target_epsilon: float | None = Field(None, gt=0, description="privacy budget; sigmas left unset "
                                         "are calibrated to spend it over the planned steps")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta epsilon is reported at")
    accountant: AccountantKind = Field("rdp", description="opacus accountant: rdp or prv")
    unit: Literal["example", "token"] = Field("example", description="what one record is: an example, or "
                                                                    "one token (valid only at head=0)")
    max_tokens: int = Field(256, ge=1, description="tokens per example assumed when calibrating sigma "
                                                   "(unit=example); longer batches spend more")
    on_budget_exhausted: Literal["stop", "warn"] = Field("stop", description="when target_epsilon is "
                                                          "spent: stop training, or warn and go on")
    learned: LearnedDefenseSettings | None = Field(
        None, description="a learned defense at the cut (kind: bottleneck or dcor), applied before "
                          "clipping and noise; unset: none")
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
        return self.forward.protected or self.backward.protected or self.learned is not None
