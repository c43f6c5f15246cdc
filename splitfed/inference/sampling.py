"""Choosing the next token on the client (logits never leave it): greedy or sampled, with the
logits processors of transformers, so that settings mean what they mean in ``model.generate``."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class SamplingSettings(BaseModel):
    """How tokens are chosen. ``temperature`` 0 is greedy decoding."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(64, ge=1, description="tokens to generate at most")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy; otherwise softmax temperature")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens (0 = all)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (1 = off)")
    repetition_penalty: float = Field(1.0, gt=0.0, description="CTRL-style penalty on seen tokens (1 = off)")
    stop: list[str] = Field(default_factory=list, description="stop when the text contains one of these")
    seed: int | None = Field(None, description="seed of the sampler (None = nondeterministic)")
    lookup_tokens: int = Field(0, ge=0, le=64, description="greedy only: draft up to this many tokens per "
                               "step by prompt lookup, verified here, so one round trip can bring several "
                               "tokens (the same tokens; 0 = off)")
    lookup_ngram: int = Field(3, ge=1, le=8, description="prompt lookup: the longest n-gram of the context's "
                              "end looked up earlier in it")
    lookup_min_ngram: int = Field(2, ge=1, le=8, description="prompt lookup: the shortest n-gram that makes "
                                  "a draft (1 drafts more often and is right less often; on the CPUs "
                                  "measured a step with a draft costs about 2x one without)")

    @model_validator(mode="after")
    def _lookup_needs_greedy(self) -> SamplingSettings:
        if self.lookup_tokens and not self.greedy:
            raise ValueError("sampling.lookup_tokens needs greedy decoding (temperature 0): a sampled token "
                             "cannot be verified against a draft")
        if self.lookup_min_ngram > self.lookup_ngram:
            raise ValueError(f"sampling.lookup_min_ngram ({self.lookup_min_ngram}) exceeds "
                             f"sampling.lookup_ngram ({self.lookup_ngram})")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def processors(self) -> LogitsProcessorList:
        """The transformers logits processors these settings stand for, in ``generate``'s order."""
        processors = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if not self.greedy:
            if self.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors


class TokenChooser:
    """Applies the processors to the last position's logits and picks each row's next token."""

    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings
        self._processors = settings.processors()
        self._generator = torch.Generator()
        if settings.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(settings.seed)

    def __call__(self, sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``sequences`` (B, T): every token so far; ``logits`` (B, V) of the next position -> (B,)."""
        scores = self._processors(sequences, logits.float())
        if self.settings.greedy:
            return scores.argmax(dim=-1)
        probabilities = torch.softmax(scores, dim=-1)
        return torch.multinomial(probabilities, 1, generator=self._generator).squeeze(-1)
