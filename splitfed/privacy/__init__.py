"""Client-side privacy: per-token clipping, Gaussian noise and opacus accounting of what is sent."""

from splitfed.privacy.accountant import PrivacyAccountant, epsilon_of, noise_multiplier_for
from splitfed.privacy.defense import PrivacyBudgetExhausted, SplitDefense, format_epsilon
from splitfed.privacy.mechanism import ClippedGaussian, clip_per_token
from splitfed.privacy.settings import ChannelSettings, PrivacySettings

__all__ = [
    "ChannelSettings",
    "ClippedGaussian",
    "PrivacyAccountant",
    "PrivacyBudgetExhausted",
    "PrivacySettings",
    "SplitDefense",
    "clip_per_token",
    "epsilon_of",
    "format_epsilon",
    "noise_multiplier_for",
]
