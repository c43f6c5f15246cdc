"""Split generation on the client: head and tail with their own KV caches, the trunk behind an endpoint.

The prefill sends the prompt's hidden states once; each decode step sends one token's hidden state
per row (B x 1 x H) and gets the trunk's output back. Sampling runs here, so logits never leave the
client. The caches persist between calls, which is what an interactive chat reuses across turns.
With ``lookup_tokens`` (greedy only), each step also carries a draft of the next tokens looked up in
the context, and the caches drop the rejected ones (``splitfed.inference.lookup``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from splitfed.endpoints import GenerationEndpoint, StaleCacheError
from splitfed.inference.lookup import LookupCounts, decode_speculative
from splitfed.inference.sampling import SamplingSettings, TokenChooser
from splitfed.models import HeadPart, TailPart, set_training
from splitfed.models.generation import decode_tokens
from splitfed.models.kv_cache import rewind_cache, rewindable
from splitfed.privacy import SplitDefense, inference_send

log = logging.getLogger(__name__)


class SplitGenerator:
    """One generation stream: the tokens fed so far, the head and tail caches, the trunk's stream."""

    def __init__(self, head: HeadPart, tail: TailPart, endpoint: GenerationEndpoint, stream: int = 0,
                 use_cache: bool = True, defense: SplitDefense | None = None) -> None:
        """``defense``: the training's privacy defense; with ``protect_inference`` the hidden states sent
        to the trunk are clipped and noised as in training (the client's own copies stay clean)."""
        self.head = head
        self.defense = defense
        self.tail = tail
        self.endpoint = endpoint
        self.stream = stream
        self.use_cache = use_cache
        self.restarts = 0
        self.lookup = LookupCounts()
        self.reset()

    def reset(self) -> None:
        """Forget the context (the server's cache is replaced at the next prefill)."""
        self._head_cache = self.head.new_cache()
        self._tail_cache = self.tail.new_cache()
        self.ids: torch.Tensor | None = None      # (B, T) every token fed so far
        self.mask: torch.Tensor | None = None     # (B, T) their attention mask
        self._resend = False  # the client's caches were dropped: the next step sends the whole context

    @property
    def past_length(self) -> int:
        return 0 if self.ids is None else int(self.ids.shape[1])

    @torch.no_grad()
    def feed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             every_position: bool = False) -> torch.Tensor:
        """Append ``input_ids`` (B, n) to the context; returns the logits of the last position (B, V),
        or of each new position (B, n, V) with ``every_position``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        device = next(self.head.parameters()).device  # the client's device setting
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        ids = input_ids if self.ids is None else torch.cat([self.ids, input_ids], dim=1)
        mask = attention_mask if self.mask is None else torch.cat([self.mask, attention_mask], dim=1)
        last_only = not every_position
        if not self.use_cache:
            logits = self._run(ids, mask, past=0, cached=False, last_only=last_only)
        elif self._resend:
            self._resend = False
            logits = self._run(ids, mask, past=0, cached=True, last_only=last_only)
        else:
            try:
                logits = self._run(input_ids, mask, past=self.past_length, cached=True, last_only=last_only)
            except StaleCacheError as error:
                log.info("stream %d: the server dropped its cache (%s); resending the %d-token context",
                         self.stream, error, ids.shape[1])
                self.restarts += 1
                self._head_cache, self._tail_cache = self.head.new_cache(), self.tail.new_cache()
                logits = self._run(ids, mask, past=0, cached=True, last_only=last_only)
        self.ids, self.mask = ids, mask
        return logits[:, -input_ids.shape[1]:, :] if every_position else logits[:, -1, :]

    def rewind(self, length: int) -> None:
        """Keep the first ``length`` tokens of the context (the server's cache follows at the next step,
        which claims ``length`` positions)."""
        if self.ids is None or not 0 <= length <= self.past_length:
            raise ValueError(f"cannot rewind to {length} tokens: the context holds {self.past_length}")
        self.ids, self.mask = self.ids[:, :length], self.mask[:, :length]  # type: ignore[index]
        if not self.use_cache or self._resend:
            return
        parts = ((self.head, self._head_cache), (self.tail, self._tail_cache))
        if all(rewindable(cache, part) for part, cache in parts):
            for part, cache in parts:
                rewind_cache(cache, part, length)
        else:  # a full sliding window: start the caches over
            log.info("stream %d: a sliding-window cache cannot drop positions; resending the context",
                     self.stream)
            self._head_cache, self._tail_cache = self.head.new_cache(), self.tail.new_cache()
            self._resend = True

    @property
    def can_look_up(self) -> bool:
        """Whether speculative steps are possible: cached, with the tail (and its logits) here."""
        return self.use_cache and isinstance(self.tail, TailPart)

    def _run(self, input_ids: torch.Tensor, mask: torch.Tensor, past: int, cached: bool,
             last_only: bool = True) -> torch.Tensor:
        set_training(self.head, False)
        set_training(self.tail, False)
        head_cache = self._head_cache if cached else None
        tail_cache = self._tail_cache if cached else None
        clean = self.head(input_ids, mask, past_key_values=head_cache)
        sent = inference_send(self.defense, clean, mask)
        hidden = self.endpoint.generate_step(self.stream, sent, mask, past, use_cache=cached).to(clean.device)
        bypass = None if self.defense is None or self.defense.cut is None else \
            self.defense.cut.bypass_output(clean)
        if bypass is not None:
            hidden = hidden + bypass
        return self.tail(hidden, mask, past_key_values=tail_cache, last_only=last_only)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 sampling: SamplingSettings | None = None, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None) -> Iterator[torch.Tensor]:
        """Feed ``input_ids`` and yield each next token of every row (B,), as ``model.generate`` picks
        them. Rows that produced an EOS yield ``pad_token_id``; it stops when every row has finished or
        after ``max_new_tokens``. The last token yielded is not fed (the next call's input starts
        with it, as a chat's next turn does)."""
        sampling = sampling or SamplingSettings()
        logits = self.feed(input_ids, attention_mask)
        assert self.ids is not None
        if not sampling.lookup_tokens or not self.can_look_up:
            if sampling.lookup_tokens:
                log.info("prompt lookup needs the tail here and the caches on: one token per step")
            yield from decode_tokens(logits, lambda token: self.feed(token[:, None]), self.ids,
                                     sampling.max_new_tokens, TokenChooser(sampling), eos_token_id,
                                     pad_token_id)
            return
        base, yielded = self.past_length, 0
        try:
            for token in decode_speculative(
                    logits, lambda tokens: self.feed(tokens, every_position=True), self.rewind, self.ids,
                    sampling.max_new_tokens, TokenChooser(sampling), eos_token_id, pad_token_id,
                    sampling.lookup_tokens, sampling.lookup_ngram, self.lookup, sampling.lookup_min_ngram):
                yielded += 1
                yield token
        finally:  # stopped early (a stop string, the caller): the last token yielded stays unfed
            if yielded and self.past_length > base + yielded - 1:
                self.rewind(base + yielded - 1)

    def close(self) -> None:
        """Free the server's cache of this stream."""
        if self.use_cache:
            self.endpoint.release_stream(self.stream)
        self.reset()
