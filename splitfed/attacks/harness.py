"""The attack harness: an honest-but-curious server with the public weights and public text only."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from splitfed.attacks.data import PUBLIC_TEXT, public_chunks, victim_rows
from splitfed.attacks.direct import direct_forward
from splitfed.attacks.inverter import Inverter, fixed_noise, sigma_sampler, train_inverter
from splitfed.attacks.labels import label_guesses
from splitfed.attacks.metrics import score
from splitfed.attacks.nearest import nearest_tokens
from splitfed.attacks.observe import (
    defend,
    head_outputs,
    median_token_norm,
    trunk_outputs,
    upstream_gradients,
)
from splitfed.layout import Layout
from splitfed.models import Partition, SplitModel, split_model, token_embedding_matrix
from splitfed.models.devices import OnDevice
from splitfed.privacy import PrivacySettings
from splitfed.training.replicate import replicate

log = logging.getLogger(__name__)

ATTACKS = ("nn-cosine", "nn-l2", "learned", "learned-mixed", "direct", "gradient", "labels")
DEFENSE_AWARE = ("adaptive", "known-plaintext", "averaging", "generation")
Attack = Literal["nn-cosine", "nn-l2", "learned", "learned-mixed", "direct", "gradient", "labels", "adaptive",
                 "known-plaintext", "averaging", "generation"]
Progress = Callable[[str], None]


class ChannelDefense(BaseModel):
    """The victim's defense on one channel: per-token clip norm (a number, ``median`` of the public
    text's token norms, or none) and noise multiplier sigma (noise std = sigma x clip)."""

    model_config = ConfigDict(extra="forbid")
    clip: float | Literal["median"] | None = Field(None, description="the victim's per-token clip norm: a "
                                                   "number, or median (the public text's median token norm); "
                                                   "unset: none")
    sigma: float = Field(0.0, ge=0, description="the victim's noise multiplier (noise std = sigma x clip)")

    @field_validator("clip")
    @classmethod
    def _positive(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float | int) and value <= 0:
            raise ValueError("clip must be > 0, 'median' or unset")
        return value

    @model_validator(mode="after")
    def _noise_needs_clip(self) -> ChannelDefense:
        if self.clip is None and self.sigma > 0:
            raise ValueError("a noise multiplier needs a clip norm (noise std = sigma x clip)")
        return self

    def resolve(self, median: float) -> tuple[float | None, float]:
        if self.clip is None:
            return None, 0.0
        return (median if self.clip == "median" else float(self.clip)), self.sigma


class InverterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(400, ge=1, description="training steps of each learned inverter")
    batch_size: int = Field(256, ge=1, description="tokens per inverter training step")
    lr: float = Field(2e-3, gt=0, description="the inverters' learning rate")
    hidden: int = Field(1024, ge=8, description="hidden width of a learned inverter")
    negatives: int = Field(4096, ge=0, description="random negative tokens of the sampled softmax")


class AttackSettings(OnDevice):
    """What ``splitfed attack`` runs. ``dtype``/``device``: the attacker's copies of the public model
    (and the victim's parts) compute there; what they observe comes back to the CPU in float32, as it
    would off the wire, and the inverters train on ``device`` too."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("smollm2", description="the public base model (the victim's, without its adapters)")
    head: int = Field(2, ge=0, description="blocks the victim keeps before the trunk")
    tail: int = Field(2, ge=0, description="blocks the victim keeps after the trunk")
    layout: Layout = Field(Layout.THREE_PART, description="two-part: the victim "
                                                      "sends its labels to the server (tail must be 0)")
    task: str = Field("cb", description="the task whose validation rows are the private text")
    victims: int = Field(32, ge=1, description="private rows attacked (the task's validation rows)")
    max_length: int = Field(128, ge=8, description="tokens per private row")
    public_text: Path = Field(PUBLIC_TEXT, description="public text the attacker trains on (wikitext-2)")
    public_tokens: int = Field(16384, ge=64, description="public tokens the inverters train on")
    gradient_public_tokens: int = Field(8192, ge=64, description="public tokens for the gradient inverter")
    chunk_length: int = Field(64, ge=8, description="tokens per public-text training chunk")
    forward: ChannelDefense = Field(ChannelDefense(), description="the victim's defense of the hidden state")
    backward: ChannelDefense = Field(ChannelDefense(), description="the victim's defense of the upstream "
                                                                   "gradient")
    mixed_sigmas: list[float] = Field([0.0, 0.25, 0.5, 1.0, 2.0], min_length=1,
                                      description="noise levels the mixed inverter trains at")
    attacks: list[Attack] = Field(list(ATTACKS), min_length=1, description="the attacks run: nn-cosine, "
                                  "nn-l2, learned, learned-mixed, direct, gradient, labels, and the "
                                  "defense-aware adaptive, known-plaintext, averaging, generation")
    inverter: InverterSettings = Field(InverterSettings(), description="the learned inverters' training")
    victim_adapters: Path | None = Field(None, description="directory with the victim's head/, trunk/, "
                                                           "tail/ adapters (e.g. runs/demo/adapters) and, "
                                                           "with a learned defense, its cut/")
    privacy: PrivacySettings = Field(PrivacySettings(), description="the victim's `privacy:` block, which "
                                     "the defense-aware attacks (adaptive, known-plaintext, averaging, "
                                     "generation) know and simulate; scored on private positions only")
    average_times: int = Field(4, ge=2, description="transmissions of a row the averaging attack averages")
    seed: int = Field(0, description="seed of the attacker's inverters and noise")
    output: Path = Field(Path("runs/attack"), description="where attack.json and attack.md go")

    @model_validator(mode="after")
    def _two_part_has_no_tail(self) -> AttackSettings:
        if self.layout == Layout.TWO_PART and self.tail != 0:
            raise ValueError("the two-part layout has no client tail: set tail: 0")
        return self


class AttackHarness:
    """Public-data features for one partition, inverters trained on demand (cached), and the
    evaluation of every attack against a victim's traffic.

    The attacker's model is ``model`` split at ``partition`` without any adapter.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, partition: Partition,
                 settings: AttackSettings, progress: Progress | None = None) -> None:
        self.model, self.tokenizer, self.partition, self.settings = model, tokenizer, partition, settings
        self.say = progress or (lambda message: log.info("%s", message))
        self.public = split_model(replicate(model), partition)
        self.device = self.public.head.device
        self.embeddings = token_embedding_matrix(model).detach().float().cpu()
        chunks = public_chunks(tokenizer, settings.public_text, settings.public_tokens, settings.chunk_length)
        self.public_ids, self.public_mask = chunks["input_ids"], chunks["attention_mask"]
        self.say(f"public text: {self.public_ids.numel()} tokens; head outputs of the public head")
        self.public_hidden = head_outputs(self.public.head, self.public_ids, self.public_mask)
        self.forward_median = median_token_norm(self.public_hidden, self.public_mask)
        self._gradients: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._inverters: dict[tuple, Inverter] = {}
        self.train_seconds = 0.0

    # -- the attacker's training data -----------------------------------------------------------------
    def public_gradients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upstream gradients of the public model on public text, loss on each row's last token only
        (as in answer-only fine-tuning): (gradients, token ids, mask)."""
        if self._gradients is None:
            rows = max(1, self.settings.gradient_public_tokens // self.settings.chunk_length)
            ids, mask = self.public_ids[:rows], self.public_mask[:rows]
            labels = torch.full_like(ids, -100)
            labels[:, -1] = ids[:, -1]
            self.say(f"public gradients on {ids.numel()} tokens")
            trunk_out = trunk_outputs(self.public.trunk, self.public_hidden[:rows], mask)
            grads = upstream_gradients(self.public.tail, trunk_out, mask, labels)
            self._gradients = (grads, ids, mask)
        return self._gradients

    @property
    def backward_median(self) -> float:
        grads, _, mask = self.public_gradients()
        return median_token_norm(grads, mask)

    def inverter(self, channel: str, clip: float | None, sigmas: tuple[float, ...]) -> Inverter:
        """An inverter of ``channel`` trained at noise levels ``sigmas`` (one: noise-aware; several:
        mixed) for clip norm ``clip``."""
        key = (channel, clip, sigmas)
        if key not in self._inverters:
            if channel == "forward":
                features, ids, mask = self.public_hidden, self.public_ids, self.public_mask
            else:
                features, ids, mask = self.public_gradients()
            keep = mask.bool()
            noise = fixed_noise(clip, sigmas[0]) if len(sigmas) == 1 else sigma_sampler(clip, sigmas)
            spec = self.settings.inverter
            started = time.perf_counter()
            self.say(f"training the {channel} inverter at sigma {', '.join(f'{s:g}' for s in sigmas)}")
            self._inverters[key] = train_inverter(
                features[keep], ids[keep], self.embeddings, noise, spec.steps, spec.batch_size, spec.lr,
                spec.hidden, spec.negatives, self.settings.seed, device=self.device)
            self.train_seconds += time.perf_counter() - started
        return self._inverters[key]

    # -- the attacks -----------------------------------------------------------------------------------
    def evaluate(self, victim: SplitModel, rows: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Every configured attack against ``victim``'s traffic on ``rows`` under the settings' defense."""
        settings = self.settings
        generator = torch.Generator().manual_seed(settings.seed + 1)
        ids, mask = rows["input_ids"], rows["attention_mask"]
        f_clip, f_sigma = settings.forward.resolve(self.forward_median)
        sent = defend(head_outputs(victim.head, ids, mask), f_clip, f_sigma, generator)
        results: dict[str, Any] = {}

        def record(name: str, predicted: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> None:
            results[name] = score(predicted, target, keep, self.tokenizer).as_dict()
            self.say(f"{name}: token accuracy {results[name]['token_accuracy']:.3f}, "
                     f"ROUGE-L {results[name]['rouge_l']:.3f}")

        for name in settings.attacks:
            if name in ("nn-cosine", "nn-l2"):
                record(name, nearest_tokens(sent, self.embeddings, name[3:]), ids, mask)
            elif name == "learned":
                record(name, self.inverter("forward", f_clip, (f_sigma,)).predict(sent), ids, mask)
            elif name == "learned-mixed":
                mixed_clip = f_clip if f_clip is not None else self.forward_median
                inverter = self.inverter("forward", mixed_clip, tuple(settings.mixed_sigmas))
                record(name, inverter.predict(sent), ids, mask)
        trunk_out = None
        if {"direct", "gradient", "labels"} & set(settings.attacks):
            trunk_out = trunk_outputs(victim.trunk, sent, mask)
        if "direct" in settings.attacks:
            record("direct", *direct_forward(self.public.tail, trunk_out, mask, ids))
        if "labels" in settings.attacks:
            record("labels", *label_guesses(settings.layout, self.public.tail, trunk_out, mask,
                                            rows["labels"]))
        if "gradient" in settings.attacks and settings.layout == Layout.THREE_PART:
            b_clip, b_sigma = settings.backward.resolve(self.backward_median)
            grads = upstream_gradients(victim.tail, trunk_out, mask, rows["labels"])
            sent_grads = defend(grads, b_clip, b_sigma, generator)
            record("gradient", self.inverter("backward", b_clip, (b_sigma,)).predict(sent_grads), ids, mask)
            results["gradient"]["clip"] = b_clip
        for name in results:
            if name != "gradient":
                results[name]["clip"] = f_clip
        return {
            "attacks": results,
            "forward": {"clip": f_clip, "sigma": f_sigma, "public_median_norm": self.forward_median},
            "backward": {"clip": settings.backward.resolve(self.backward_median)[0]
                         if "gradient" in results else None, "sigma": settings.backward.sigma},
        }


def load_victim_rows(settings: AttackSettings, tokenizer: Any) -> dict[str, torch.Tensor]:
    return victim_rows(tokenizer, settings.task, "val", settings.victims, settings.max_length)
