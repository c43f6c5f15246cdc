"""An in-process ``GenerationEndpoint``: a server-side ``GenerationCaches`` in this process."""

from __future__ import annotations

import torch


class LocalGeneration:
    """A ``GenerationEndpoint`` over a server-side ``GenerationCaches`` in this process (tests, tools)."""

    def __init__(self, caches, owner: str = "local") -> None:  # caches: server.generation.GenerationCaches
        self.caches = caches
        self.owner = owner

    def generate_step(self, stream: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                      past_length: int, use_cache: bool = True) -> torch.Tensor:
        """One step; a stream the caches no longer hold raises ``StaleCacheError`` (the server's
        ``StaleStream`` is one)."""
        output, _ = self.caches.step(self.owner, stream, hidden, attention_mask, past_length, use_cache)
        return output

    def release_stream(self, stream: int) -> None:
        self.caches.release(self.owner, stream)
