"""Attacks that know the defense: adaptive, known-plaintext, averaging, and on generation traffic.

The attacker is the server. It has the public weights, public text, the defense's algorithm and
settings (never the victim's trained weights, seeds or noise), and what the victim sent. Every
attack predicts a token per received vector; scores count the victim's private positions only.

* ``adaptive``: run the same defense code with the attacker's own seed (its own warm-up on public
  text through the public model), then train an inverter on that simulated traffic.
* ``known-plaintext``: fine-tune the adaptive inverter on the victim's own traffic at the template's
  positions (the server knows the prompt template, so it knows those tokens), then invert the rest.
* ``averaging``: a row sent in K epochs arrives K times with fresh randomness; average the K
  transmissions, and invert with an inverter trained on K-averaged simulated traffic.
* ``generation``: the adaptive inverter on what inference sends for the prompts (``splitfed
  generate``), which may differ from training traffic (e.g. a bottleneck's mean instead of a sample).
* ``optimisation`` (BiSR / PIDI style, by search): start from the best inverter's guess and, left to
  right, keep at each position the candidate token whose public head output, passed through the
  attacker's own (noise-free) copy of the defense, is closest to what was received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from splitfed.attacks.inverter import Inverter, train_inverter
from splitfed.attacks.metrics import score
from splitfed.models import HeadPart, SplitModel
from splitfed.models.kv_cache import repeated_cache
from splitfed.privacy import PrivacySettings, SplitDefense, warm_up

log = logging.getLogger(__name__)

Send = Callable[[torch.Tensor], torch.Tensor]


def simulated_defense(privacy: PrivacySettings, public: SplitModel, public_ids: torch.Tensor,
                      public_mask: torch.Tensor, hidden_size: int, seed: int,
                      planned_steps: int | None = None) -> SplitDefense:
    """The victim's defense as the attacker rebuilds it: the same settings (``planned_steps`` as the
    victim's, where sigma is calibrated from a target epsilon), the attacker's seed, warmed up (for a
    learned defense) on public text through the public model."""
    defense = SplitDefense(privacy.model_copy(update={"seed": seed}), planned_steps=planned_steps,
                           hidden_size=hidden_size)
    if defense.cut is not None:
        warm_up(defense.cut, public.head, public.trunk, public.tail, public_ids, public_mask, seed=seed)
        defense.cut.eval()
    return defense


@torch.no_grad()
def training_send(defense: SplitDefense, hidden: torch.Tensor) -> torch.Tensor:
    """What a client with ``defense`` sends in training for head outputs ``hidden`` (any shape ending
    in the hidden size): a fresh sample of the learned cut, then clipping and noise."""
    sent = hidden
    if defense.cut is not None:
        sent, _ = defense.cut.send(hidden, None, training=True, with_loss=False)
        sent = sent.detach()
    return defense.protect("forward", sent)


def averaged(send: Send, times: int) -> Send:
    """``send`` applied ``times`` times with fresh randomness, averaged."""
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    return lambda x: torch.stack([send(x) for _ in range(times)]).mean(0)


def fine_tune(inverter: Inverter, features: torch.Tensor, targets: torch.Tensor, steps: int, lr: float,
              batch_size: int = 128, seed: int = 0,
              replay: tuple[torch.Tensor, torch.Tensor, Send] | None = None) -> Inverter:
    """Fine-tune ``inverter`` (in place) on labelled vectors with a full-vocabulary softmax.

    ``replay`` (features, targets, send): every batch also holds as many of these, passed through
    ``send``, so that a few known pairs of a handful of tokens do not make it forget the rest."""
    if features.shape[0] == 0:
        return inverter
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in inverter.parameters() if p.requires_grad], lr=lr)
    inverter.train()
    for _ in range(steps):
        index = torch.randint(features.shape[0], (min(batch_size, features.shape[0]),), generator=generator)
        x, y = features[index], targets[index]
        if replay is not None:
            old_x, old_y, send = replay
            pick = torch.randint(old_x.shape[0], (batch_size,), generator=generator)
            x, y = torch.cat([x, send(old_x[pick])]), torch.cat([y, old_y[pick]])
        loss = nn.functional.cross_entropy(inverter(x.to(inverter.device)), y.to(inverter.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return inverter


@torch.no_grad()
def search_refine(head: HeadPart, to_wire: Callable[[torch.Tensor], torch.Tensor], received: torch.Tensor,
                  guess: torch.Tensor, attention_mask: torch.Tensor,
                  candidates: torch.Tensor) -> torch.Tensor:
    """Refine ``guess`` (B, T) position by position, left to right: at each position try every token
    of ``candidates`` (B, T, k) after the prefix chosen so far (its KV cache, repeated k times), run
    the public ``head`` on it and ``to_wire`` on the result, and keep the candidate closest in cosine
    similarity to ``received`` there. Causal attention makes the prefix enough; padding is kept."""
    head.eval()
    rows, width, k = candidates.shape
    out = guess.clone()
    cache = head.new_cache()
    for t in range(width):
        mask = attention_mask[:, :t + 1]
        real = attention_mask[:, t].bool()
        if bool(real.any()):
            tried = head(candidates[:, t].reshape(rows * k, 1), mask.repeat_interleave(k, 0),
                         past_key_values=repeated_cache(cache, k))[:, -1].float().cpu()
            similarity = nn.functional.cosine_similarity(
                to_wire(tried).float().reshape(rows, k, -1), received[:, t].float()[:, None], dim=-1)
            best = candidates[:, t].gather(1, similarity.argmax(-1, keepdim=True)).squeeze(1)
            out[:, t] = torch.where(real, best, out[:, t])
        head(out[:, t:t + 1], mask, past_key_values=cache)  # the chosen token joins the prefix
    return out


def noise_free_wire(defense: SplitDefense | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the attacker expects on the wire for a head output, without the defense's randomness: its
    own transform's mean (a learned defense); clipping does not change a vector's direction."""
    if defense is None or defense.cut is None:
        return lambda h: h
    cut = defense.cut
    return lambda h: cut.transform(h, sample=False)[0]


class AdaptiveAttacker:
    """Inverters trained on the attacker's simulation of a known defense, and the attacks using them.

    ``public_hidden``/``public_ids``/``public_mask``: the public head's outputs on public text and
    their tokens; ``embeddings``: the public token embedding matrix."""

    def __init__(self, defense: SplitDefense, public_hidden: torch.Tensor, public_ids: torch.Tensor,
                 public_mask: torch.Tensor, embeddings: torch.Tensor, inverter_steps: int = 200,
                 batch_size: int = 256, lr: float = 2e-3, hidden: int = 1024, negatives: int = 4096,
                 seed: int = 0, device: torch.device | str = "cpu") -> None:
        keep = public_mask.bool()
        self.defense = defense
        self.features, self.targets = public_hidden[keep], public_ids[keep]
        self.embeddings = embeddings
        self.spec = dict(steps=inverter_steps, batch_size=batch_size, lr=lr, hidden=hidden,
                         negatives=negatives, seed=seed, device=device)
        self._inverters: dict[int, Inverter] = {}

    def inverter(self, times: int = 1) -> Inverter:
        """The inverter of (``times``-averaged) simulated traffic."""
        if times not in self._inverters:
            send = averaged(lambda x: training_send(self.defense, x), times)
            log.info("training the adaptive inverter (traffic averaged over %d)", times)
            self._inverters[times] = train_inverter(self.features, self.targets, self.embeddings,
                                                    lambda x, _generator: send(x), **self.spec)
        return self._inverters[times]

    def known_plaintext(self, sent: torch.Tensor, ids: torch.Tensor, known: torch.Tensor,
                        steps: int = 150, lr: float = 3e-4) -> Inverter:
        """A copy of the adaptive inverter fine-tuned on the victim's vectors at ``known`` positions,
        with simulated public traffic replayed beside them."""
        copy = Inverter(self.features.shape[-1], self.embeddings, self.spec["hidden"]).to(self.spec["device"])
        copy.load_state_dict(self.inverter().state_dict())
        keep = known.bool()
        replay = (self.features, self.targets, lambda x: training_send(self.defense, x))
        return fine_tune(copy, sent[keep].float(), ids[keep], steps, lr, seed=self.spec["seed"],
                         replay=replay)


def evaluate_traffic(attacker: AdaptiveAttacker, rows: dict[str, torch.Tensor],
                     training_sends: list[torch.Tensor], inference_sent: torch.Tensor | None,
                     tokenizer: Any) -> dict[str, dict[str, Any]]:
    """Every adaptive attack on one victim's traffic for ``rows``, scored on private positions.

    ``training_sends``: what the victim sent for the rows in training, one tensor per transmission
    (K >= 1; the first is used by the single-transmission attacks); ``inference_sent``: what its
    inference sends for the same rows (None: not attacked)."""
    ids, private = rows["input_ids"], rows["private"]
    known = rows["attention_mask"] * (1 - private)
    first = training_sends[0]
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, predicted: torch.Tensor, keep: torch.Tensor) -> None:
        results[name] = score(predicted, ids, keep, tokenizer).as_dict()
        log.info("%s: private token accuracy %.3f, ROUGE-L %.3f", name, results[name]["token_accuracy"],
                 results[name]["rouge_l"])

    record("adaptive", attacker.inverter().predict(first), private)
    record("known-plaintext", attacker.known_plaintext(first, ids, known).predict(first), private)
    if len(training_sends) > 1:
        mean = torch.stack(training_sends).mean(0)
        results_name = f"averaging-{len(training_sends)}"
        record(results_name, attacker.inverter(len(training_sends)).predict(mean), private)
    if inference_sent is not None:
        record("generation", attacker.inverter().predict(inference_sent), private * rows["prompt"])
    return results
