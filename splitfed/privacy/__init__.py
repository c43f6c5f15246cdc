"""Client-side privacy: per-token clipping, Gaussian noise and opacus accounting of what is sent."""

from splitfed.privacy.accountant import PrivacyAccountant, epsilon_of, noise_multiplier_for
from splitfed.privacy.cut import distance_correlation
from splitfed.privacy.defense import PrivacyBudgetExhausted, SplitDefense, format_epsilon, inference_send
from splitfed.privacy.learned import LearnedCut, load_cut, save_cut, warm_up
from splitfed.privacy.mechanism import ClippedGaussian, clip_per_token
from splitfed.privacy.settings import (
    LEARNED_DEFENSES,
    BottleneckSettings,
    ChannelSettings,
    DistanceCorrelationSettings,
    PrivacySettings,
)

__all__ = [
    "LEARNED_DEFENSES",
    "BottleneckSettings",
    "ChannelSettings",
    "DistanceCorrelationSettings",
    "LearnedCut",
    "ClippedGaussian",
    "PrivacyAccountant",
    "PrivacyBudgetExhausted",
    "PrivacySettings",
    "SplitDefense",
    "clip_per_token",
    "epsilon_of",
    "distance_correlation",
    "format_epsilon",
    "inference_send",
    "load_cut",
    "noise_multiplier_for",
    "save_cut",
    "warm_up",
]
