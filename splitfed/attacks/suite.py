"""Every attack against one defended client's own traffic, scored on private positions only.

Used by the privacy frontier benchmark and the demo: the victim is a trained (or freshly warmed-up)
``SplitClient``; the server's trunk is what the server runs. The strongest attack is the one with the
highest ROUGE-L on the victim's private positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from splitfed.attacks.adaptive import (
    AdaptiveAttacker,
    evaluate_traffic,
    noise_free_wire,
    search_refine,
    simulated_defense,
    training_send,
)
from splitfed.attacks.direct import direct_forward
from splitfed.attacks.harness import AttackHarness
from splitfed.attacks.metrics import score
from splitfed.attacks.nearest import nearest_tokens
from splitfed.attacks.observe import head_outputs, trunk_outputs
from splitfed.models import HeadPart, TrunkPart
from splitfed.privacy import PrivacySettings, SplitDefense, inference_send

log = logging.getLogger(__name__)


@dataclass
class Traffic:
    """What one victim sent for the attacked rows: K training transmissions and the inference one."""

    training: list[torch.Tensor]
    inference: torch.Tensor


@torch.no_grad()
def victim_traffic(head: HeadPart, defense: SplitDefense | None, rows: dict[str, torch.Tensor],
                   times: int = 1) -> Traffic:
    """The victim's head (as trained) and defense on ``rows``: ``times`` training transmissions, each
    with fresh randomness, and what inference sends."""
    clean = head_outputs(head, rows["input_ids"], rows["attention_mask"])
    if defense is None:
        return Traffic([clean] * times, clean)
    if defense.cut is not None:
        defense.cut.eval()
    sends = [training_send(defense, clean) for _ in range(times)]
    return Traffic(sends, inference_send(defense, clean, rows["attention_mask"]))


def strongest(attacks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The attack with the highest ROUGE-L (ties: higher token accuracy)."""
    name = max(attacks, key=lambda n: (attacks[n]["rouge_l"], attacks[n]["token_accuracy"]))
    return {"attack": name, **{k: attacks[name][k] for k in ("rouge_l", "token_accuracy", "exact_sequence")}}


class TrafficAttacks:
    """The attacker for one partition and one defense setting: the harness's public-data inverters
    plus, for a defended victim, the adaptive attacker (trained once, reused for every checkpoint)."""

    def __init__(self, harness: AttackHarness, privacy: PrivacySettings, seed: int = 10_000,
                 planned_steps: int | None = None, search_candidates: int = 4) -> None:
        """``search_candidates``: tokens the optimisation attack tries per position (0: not run)."""
        self.harness = harness
        self.search_candidates = search_candidates
        self.privacy = privacy
        self.defended = privacy.enabled
        self.forward_clip = privacy.forward.clip
        self.forward_sigma = privacy.forward.sigma or 0.0
        self.adaptive: AdaptiveAttacker | None = None
        if self.defended:
            public = harness.public
            defense = simulated_defense(privacy, public, harness.public_ids, harness.public_mask,
                                        int(harness.embeddings.shape[1]), seed, planned_steps)
            spec = harness.settings.inverter
            self.adaptive = AdaptiveAttacker(defense, harness.public_hidden, harness.public_ids,
                                             harness.public_mask, harness.embeddings, spec.steps,
                                             spec.batch_size, spec.lr, spec.hidden, spec.negatives,
                                             harness.settings.seed, harness.device)

    def run(self, traffic: Traffic, trunk: TrunkPart, rows: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Every attack on ``traffic``; ``trunk`` is the server's (for the direct-forward attack)."""
        ids, mask, private = rows["input_ids"], rows["attention_mask"], rows["private"]
        tokenizer = self.harness.tokenizer
        sent = traffic.training[0]
        results: dict[str, dict[str, Any]] = {}
        for metric in ("cosine", "l2"):
            guess = nearest_tokens(sent, self.harness.embeddings, metric)
            results[f"nn-{metric}"] = score(guess, ids, private, tokenizer).as_dict()
        inverter = self.harness.inverter("forward", self.forward_clip, (self.forward_sigma,))
        results["learned"] = score(inverter.predict(sent), ids, private, tokenizer).as_dict()
        predicted, target, keep = direct_forward(self.harness.public.tail, trunk_outputs(trunk, sent, mask),
                                                 mask, ids)
        results["direct"] = score(predicted, target, keep & private[:, 1:].bool(), tokenizer).as_dict()
        if self.adaptive is not None:
            results.update(evaluate_traffic(self.adaptive, rows, traffic.training, traffic.inference,
                                            tokenizer))
            inverter = self.adaptive.inverter()
        else:  # undefended: generation sends what training sends
            results["generation"] = score(inverter.predict(traffic.inference), ids, private * rows["prompt"],
                                          tokenizer).as_dict()
        if self.search_candidates > 0:
            defense = None if self.adaptive is None else self.adaptive.defense
            candidates = inverter.top_k(sent, self.search_candidates)
            refined = search_refine(self.harness.public.head, noise_free_wire(defense), sent,
                                    inverter.predict(sent), mask, candidates)
            results["optimisation"] = score(refined, ids, private, tokenizer).as_dict()
        return {"attacks": results, "strongest": strongest(results)}
