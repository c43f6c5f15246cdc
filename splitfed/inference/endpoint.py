"""Where a client's generation sends the trunk's part of each step: over the network or in-process."""

from __future__ import annotations

from typing import Protocol

import torch


class StaleCacheError(RuntimeError):
    """The trunk no longer holds this generation stream's cache (expired, evicted, released): the
    client starts the stream over by sending its whole context again."""


class GenerationEndpoint(Protocol):
    """The trunk's side of split inference, one KV cache per stream.

    ``generate_step`` runs ``hidden`` (B, new, H) through the trunk; ``attention_mask`` (B, past + new)
    covers the stream's cached positions and the new ones; ``past_length`` 0 starts the stream's cache
    afresh; ``use_cache`` False keeps nothing (the caller then sends the whole sequence every step).
    """

    def generate_step(self, stream: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                      past_length: int, use_cache: bool = True) -> torch.Tensor: ...

    def release_stream(self, stream: int) -> None: ...


class LocalGeneration:
    """A ``GenerationEndpoint`` over a server-side ``GenerationCaches`` in this process (tests, tools)."""

    def __init__(self, caches, owner: str = "local") -> None:  # caches: server.generation.GenerationCaches
        self.caches = caches
        self.owner = owner

    def generate_step(self, stream: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                      past_length: int, use_cache: bool = True) -> torch.Tensor:
        from splitfed.server.generation import StaleStream

        try:
            output, _ = self.caches.step(self.owner, stream, hidden, attention_mask, past_length, use_cache)
        except StaleStream as error:
            raise StaleCacheError(str(error)) from None
        return output

    def release_stream(self, stream: int) -> None:
        self.caches.release(self.owner, stream)
