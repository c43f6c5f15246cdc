"""Split generation on the client: head and tail with their own KV caches, the trunk behind an endpoint.

The prefill sends the prompt's hidden states once; each decode step sends one token's hidden state
per row (B x 1 x H) and gets the trunk's output back. Sampling runs here, so logits never leave the
client. The caches persist between calls, which is what an interactive chat reuses across turns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from splitfed.endpoints import GenerationEndpoint, StaleCacheError
from splitfed.inference.sampling import SamplingSettings, TokenChooser
from splitfed.models import HeadPart, TailPart, set_training
from splitfed.models.generation import decode_tokens
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
        self.reset()

    def reset(self) -> None:
        """Forget the context (the server's cache is replaced at the next prefill)."""
        self._head_cache = self.head.new_cache()
        self._tail_cache = self.tail.new_cache()
        self.ids: torch.Tensor | None = None      # (B, T) every token fed so far
        self.mask: torch.Tensor | None = None     # (B, T) their attention mask

    @property
    def past_length(self) -> int:
        return 0 if self.ids is None else int(self.ids.shape[1])

    @torch.no_grad()
    def feed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``input_ids`` (B, n) to the context; returns the logits of the last position (B, V)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        device = next(self.head.parameters()).device  # the client's device setting
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        ids = input_ids if self.ids is None else torch.cat([self.ids, input_ids], dim=1)
        mask = attention_mask if self.mask is None else torch.cat([self.mask, attention_mask], dim=1)
        if not self.use_cache:
            logits = self._run(ids, mask, past=0, cached=False)
        else:
            try:
                logits = self._run(input_ids, mask, past=self.past_length, cached=True)
            except StaleCacheError as error:
                log.info("stream %d: the server dropped its cache (%s); resending the %d-token context",
                         self.stream, error, ids.shape[1])
                self.restarts += 1
                self._head_cache, self._tail_cache = self.head.new_cache(), self.tail.new_cache()
                logits = self._run(ids, mask, past=0, cached=True)
        self.ids, self.mask = ids, mask
        return logits[:, -1, :]

    def _run(self, input_ids: torch.Tensor, mask: torch.Tensor, past: int, cached: bool) -> torch.Tensor:
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
        return self.tail(hidden, mask, past_key_values=tail_cache, last_only=True)

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
        yield from decode_tokens(logits, lambda token: self.feed(token[:, None]), self.ids,
                                 sampling.max_new_tokens, TokenChooser(sampling), eos_token_id,
                                 pad_token_id)

    def close(self) -> None:
        """Free the server's cache of this stream."""
        if self.use_cache:
            self.endpoint.release_stream(self.stream)
        self.reset()
