"""The demo's defenses (``splitfed demo --defense NAME``) and what the server could read of the run's
own traffic, with and without the defense."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch

from splitfed.attacks import AttackHarness, AttackSettings, TrafficAttacks, load_victim_rows, victim_traffic
from splitfed.attacks.observe import head_outputs, median_token_norm
from splitfed.models import HeadPart, Partition, TrunkPart, token_embedding_matrix
from splitfed.privacy import (
    BottleneckSettings,
    ChannelSettings,
    DistanceCorrelationSettings,
    PrivacySettings,
    SplitDefense,
)
from splitfed.tasks.public_text import public_chunks

log = logging.getLogger(__name__)

DemoDefense = Literal["none", "noise", "bottleneck", "dcor"]
DEFENSES: tuple[str, ...] = ("none", "noise", "bottleneck", "dcor")
NOISE_SIGMA = 0.2


def demo_privacy(name: str, head: HeadPart, tokenizer: Any, seed: int) -> PrivacySettings:
    """The ``privacy:`` block of a named demo defense (the frontier's ``noise:0.2``, ``vib-bypass:300:1``
    and, with the bypass added, ``dcor:1`` rows).

    * ``noise``: the hidden state clipped per token to the public text's median norm, noise sigma 0.2;
    * ``bottleneck``: the information bottleneck, KL weight 300 (per code dimension), initial scale 1, with
      the local bypass;
    * ``dcor``: distance correlation, weight 1, with the local bypass.
    """
    if name == "none":
        return PrivacySettings()
    if name == "noise":
        public = public_chunks(tokenizer, tokens=4096, length=64)
        clip = median_token_norm(head_outputs(head, public["input_ids"], public["attention_mask"]),
                                 public["attention_mask"])
        return PrivacySettings(forward=ChannelSettings(clip=clip, sigma=NOISE_SIGMA), seed=seed)
    common = {"bypass": True, "warmup_steps": 40, "warmup_batch_size": 4, "warmup_lr": 1e-3, "lr": 1e-3}
    if name == "bottleneck":
        learned = BottleneckSettings(kl_weight=300.0, initial_scale=1.0, **common)
        return PrivacySettings(learned=learned, seed=seed)
    if name == "dcor":
        return PrivacySettings(learned=DistanceCorrelationSettings(weight=1.0, **common), seed=seed)
    raise ValueError(f"unknown defense {name!r}: choose one of {', '.join(DEFENSES)}")


def exposure(model: torch.nn.Module, tokenizer: Any, task: str, partition: Partition, head: HeadPart,
             trunk: TrunkPart, privacy: PrivacySettings, defense: SplitDefense | None, seed: int = 0,
             victims: int = 32) -> dict[str, Any]:
    """The strongest attack on the run's own traffic for ``victims`` validation rows (private
    positions): what the head's output would have given the server without the defense, and what
    the defense actually sent."""
    hidden = int(token_embedding_matrix(model).shape[1])
    settings = AttackSettings(model="given", head=partition.head, tail=partition.tail, task=task,
                              victims=victims, public_tokens=8192, seed=seed,
                              inverter={"hidden": min(1024, 4 * hidden)})  # 1024 from hidden 256 up
    harness = AttackHarness(model, tokenizer, partition, settings)
    rows = load_victim_rows(settings, tokenizer)
    without = TrafficAttacks(harness, PrivacySettings()).run(victim_traffic(head, None, rows), trunk, rows)
    result = {"victims": int(rows["input_ids"].shape[0]), "private_tokens": int(rows["private"].sum()),
              "without_defense": without["strongest"], "with_defense": None}
    if defense is not None:
        attacks = TrafficAttacks(harness, privacy, seed=10_000 + seed, planned_steps=1)
        result["with_defense"] = attacks.run(victim_traffic(head, defense, rows, 4), trunk, rows)["strongest"]
    return result
