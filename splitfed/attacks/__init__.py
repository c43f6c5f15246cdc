"""Attacks of an honest-but-curious server on split-learning traffic, and how much they recover.

The attacker has what the server sees, the public pretrained weights and public text only.
"""

from splitfed.attacks.adaptive import AdaptiveAttacker, simulated_defense, training_send
from splitfed.attacks.data import PUBLIC_TEXT, clean_wikitext, public_chunks, victim_rows
from splitfed.attacks.direct import direct_forward
from splitfed.attacks.harness import (
    ATTACKS,
    AttackHarness,
    AttackSettings,
    ChannelDefense,
    InverterSettings,
    load_victim_rows,
)
from splitfed.attacks.inverter import Inverter, fixed_noise, sigma_sampler, train_inverter
from splitfed.attacks.metrics import AttackScore, score
from splitfed.attacks.nearest import nearest_tokens
from splitfed.attacks.observe import (
    defend,
    head_outputs,
    median_token_norm,
    trunk_outputs,
    upstream_gradients,
)
from splitfed.attacks.suite import Traffic, TrafficAttacks, strongest, victim_traffic

__all__ = [
    "AdaptiveAttacker",
    "Traffic",
    "TrafficAttacks",
    "simulated_defense",
    "strongest",
    "training_send",
    "victim_traffic",
    "ATTACKS",
    "PUBLIC_TEXT",
    "AttackHarness",
    "AttackScore",
    "AttackSettings",
    "ChannelDefense",
    "Inverter",
    "InverterSettings",
    "clean_wikitext",
    "defend",
    "direct_forward",
    "fixed_noise",
    "head_outputs",
    "load_victim_rows",
    "median_token_norm",
    "nearest_tokens",
    "public_chunks",
    "score",
    "sigma_sampler",
    "train_inverter",
    "trunk_outputs",
    "upstream_gradients",
    "victim_rows",
]
