"""Split inference on the server: one trunk KV cache per client generation stream, within a budget.

Each stream (a session's numbered generation) keeps its trunk cache between steps, so a decode step
carries one token's hidden state per row. Caches expire after ``ttl_s`` idle, are evicted least
recently used when a new step needs room, and a step that cannot fit gets ``CacheBudgetExceeded``
(never an out-of-memory crash). Decode steps (one new token) of different streams that arrive while
the trunk is busy run together as one batched trunk call when their caches allow it. A step that
claims fewer positions than the stream holds drops the rest first (the rejected draft tokens of a
speculative decode step), where the cache can.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from splitfed.endpoints import StaleCacheError
from splitfed.memory import release_free_memory
from splitfed.models import TrunkPart, set_training
from splitfed.models.kv_cache import (
    append_rows,
    batchable,
    bytes_per_token,
    cache_bytes,
    merge_caches,
    prefill_transient_bytes,
    rewind_cache,
    rewindable,
)
from splitfed.server.compute import ComputeThread

log = logging.getLogger(__name__)

LARGE_STEP_BYTES = 16 << 20  # a step whose working memory is this large hands it back when done


class GenerationError(RuntimeError):
    """A generation step the server refuses; ``code`` is stable and machine-readable."""

    code = "generation"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StaleStream(GenerationError, StaleCacheError):
    """The stream's cache is gone (expired, evicted, released) or holds another length: resend the
    whole context with past_length 0. A ``StaleCacheError``, the seam's name for it, so callers below
    the server catch it without importing the server."""

    code = "stale_cache"


class CacheBudgetExceeded(GenerationError):
    """The step's cache would not fit in the generation memory budget, even after eviction."""

    code = "cache_budget"


@dataclass
class _Stream:
    cache: Any  # the trunk's DynamicCache
    batch: int
    tokens: int = 0
    bytes: int = 0
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


@dataclass
class _Decode:
    stream: _Stream
    hidden: torch.Tensor
    mask: torch.Tensor
    output: torch.Tensor | None = None
    error: BaseException | None = None
    done: bool = False


class GenerationCaches:
    """The trunk's generation streams: ``step`` runs one prefill or decode step of one stream."""

    def __init__(self, trunk: TrunkPart, budget_bytes: int = 1 << 30, ttl_s: float = 300.0,
                 max_streams_per_owner: int = 8, compute: ComputeThread | None = None,
                 batch_decodes: bool = True) -> None:
        self.trunk = trunk
        self.budget_bytes = budget_bytes
        self.ttl_s = ttl_s
        self.max_streams_per_owner = max_streams_per_owner
        self.batch_decodes = batch_decodes
        self._compute = compute if compute is not None else ComputeThread("generation-compute")
        self._lock = threading.Condition()
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._reserved = 0
        self._queue: list[_Decode] = []
        self._running = False
        self.per_token = bytes_per_token(trunk)
        self.batched_calls = 0
        self.batched_rows = 0
        self.accounted_peak = 0  # the most bytes accounted at once: caches plus steps' working memory

    # -- accounting --------------------------------------------------------------------------------
    @property
    def bytes_in_use(self) -> int:
        """Bytes of all streams' caches, and what the steps computing now reserved (their caches'
        growth and their working memory)."""
        with self._lock:
            return self._in_use()

    def _in_use(self) -> int:
        return sum(s.bytes for s in self._streams.values()) + self._reserved

    def streams(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._streams)

    def _make_room(self, need: int, keep: tuple[str, int]) -> None:
        used = sum(s.bytes for s in self._streams.values()) + self._reserved
        if used + need <= self.budget_bytes:
            return
        # the owner holding the most goes first, then least recently used: one client filling the cache
        # loses its own idle streams before another client loses one
        held: dict[str, int] = {}
        for key, stream in self._streams.items():
            held[key[0]] = held.get(key[0], 0) + stream.bytes
        idle = sorted((-held[key[0]], s.last_used, key) for key, s in self._streams.items()
                      if not s.busy and key != keep)
        idle = [(used_at, key) for _, used_at, key in idle]
        evictable = sum(self._streams[key].bytes for _, key in idle)
        if used - evictable + need > self.budget_bytes:  # nothing is evicted for a step that cannot fit
            raise CacheBudgetExceeded(
                f"this step needs {need / 2**20:.2f} MiB (its trunk cache and working memory); "
                f"{(used - evictable) / 2**20:.2f} "
                f"MiB of the {self.budget_bytes / 2**20:.2f} MiB generation budget are held by streams in "
                "use: retry later, or shorten the context or the batch")
        for _, key in idle:
            stream = self._streams.pop(key)
            used -= stream.bytes
            log.info("evicted the generation cache of %s stream %d (%d KiB) to make room", key[0][:8],
                     key[1], stream.bytes >> 10)
            if used + need <= self.budget_bytes:
                return

    # -- lifecycle ---------------------------------------------------------------------------------
    def release(self, owner: str, stream: int | None = None) -> int:
        """Free one stream of ``owner`` (or all of them); returns the number freed."""
        with self._lock:
            keys = [k for k in self._streams if k[0] == owner and (stream is None or k[1] == stream)]
            for key in keys:
                del self._streams[key]
            empty = keys and not self._streams
        if empty:
            release_free_memory()
        return len(keys)

    def expire(self, now: float | None = None) -> int:
        """Free the streams idle for longer than ``ttl_s``; returns the number freed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [k for k, s in self._streams.items() if not s.busy and now - s.last_used > self.ttl_s]
            for key in old:
                del self._streams[key]
            empty = old and not self._streams
        if empty:
            release_free_memory()
        if old:
            log.info("expired %d idle generation cache(s)", len(old))
        return len(old)

    # -- steps -------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, owner: str, stream_id: int, hidden: torch.Tensor, mask: torch.Tensor, past_length: int,
             use_cache: bool = True, blocks: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
        """Run ``hidden`` (B, new, H) with ``mask`` (B, past_length + new) through the trunk (or its
        ``blocks`` only); returns the output and the number of positions the stream's cache now holds
        (0 without cache). Decode steps of streams over the whole trunk are batched together; a stream
        over a sub-range of blocks runs alone."""
        batch, new = hidden.shape[:2]
        if not use_cache:
            if past_length:
                raise StaleStream("a step without cache carries the whole context (past_length 0)")
            return self._compute.run(self._run_trunk, hidden, mask, None, blocks), 0
        key = (owner, stream_id)
        with self._lock:
            stream = self._streams.get(key)
            if past_length == 0:
                if stream is None and sum(k[0] == owner for k in self._streams) >= self.max_streams_per_owner:
                    raise CacheBudgetExceeded(f"at most {self.max_streams_per_owner} generation streams per "
                                              "session")
                if stream is not None and stream.busy:
                    raise StaleStream(f"stream {stream_id} is busy with another step")
                self._streams.pop(key, None)
                stream = _Stream(self.trunk.new_cache(), batch)
            elif stream is None:
                raise StaleStream(f"no cache for stream {stream_id} (expired, evicted or released): send the "
                                  "whole context again with past_length 0")
            elif stream.busy or stream.tokens < past_length or stream.batch != batch or (
                    stream.tokens > past_length and not rewindable(stream.cache, self.trunk)):
                raise StaleStream(f"stream {stream_id} holds {stream.tokens} positions of {stream.batch} "
                                  f"rows, the step claims {past_length} of {batch}")
            elif stream.tokens > past_length:  # the client rejected draft tokens: forget them
                rewind_cache(stream.cache, self.trunk, past_length)
                stream.tokens = past_length
            working = prefill_transient_bytes(self.trunk, batch, new, past_length)
            need = batch * new * self.per_token + working  # the cache's growth and the step's working memory
            self._make_room(need, key)
            self._streams[key] = stream
            stream.busy = True
            self._reserved += need
            self.accounted_peak = max(self.accounted_peak, self._in_use())
        try:
            if new == 1 and self.batch_decodes and blocks is None and batchable(stream.cache, self.trunk):
                output = self._decode_together(_Decode(stream, hidden, mask))
            else:
                output = self._compute.run(self._run_trunk, hidden, mask, stream.cache, blocks)
        except BaseException:
            with self._lock:
                self._reserved -= need
                stream.busy = False
                self._streams.pop(key, None)  # its cache may be half-updated: the client starts over
            raise
        with self._lock:
            self._reserved -= need
            stream.tokens = past_length + new
            stream.bytes = cache_bytes(stream.cache, self.trunk)
            stream.last_used = time.monotonic()
            stream.busy = False
        if working >= LARGE_STEP_BYTES:  # a long prefill's freed working memory goes back to the system,
            release_free_memory()  # or the allocator keeps it resident beyond what the budget accounts
        return output, stream.tokens

    def _decode_together(self, item: _Decode) -> torch.Tensor:
        """Queue a decode step; the first waiting thread runs every queued step as one trunk call."""
        with self._lock:
            self._queue.append(item)
            while not item.done and self._running:
                self._lock.wait(1.0)
            if not item.done:
                batch, self._queue = self._queue, []
                self._running = True
        if not item.done:
            try:
                self._run_decodes(batch)
            except BaseException as error:  # every member of the batch learns of it
                for member in batch:
                    member.error = error
            finally:
                with self._lock:
                    for member in batch:
                        member.done = True
                    self._running = False
                    self._lock.notify_all()
        if item.error is not None:
            raise item.error
        assert item.output is not None
        return item.output

    @torch.no_grad()
    def _run_trunk(self, hidden: torch.Tensor, mask: torch.Tensor, cache: Any,
                   blocks: tuple[int, int] | None = None) -> torch.Tensor:
        """The trunk in inference mode (on the compute thread: grad mode is per thread)."""
        set_training(self.trunk, False)
        return self.trunk(hidden, mask, past_key_values=cache, blocks=blocks)

    def _run_decodes(self, batch: list[_Decode]) -> None:
        if len(batch) == 1:
            (item,) = batch
            item.output = self._compute.run(self._run_trunk, item.hidden, item.mask, item.stream.cache)
            return
        self._compute.run(self._decode_merged, batch)

    @torch.no_grad()
    def _decode_merged(self, batch: list[_Decode]) -> None:
        """Several streams' decode steps as one trunk call over their merged caches (compute thread)."""
        merged, pads = merge_caches([item.stream.cache for item in batch], self.trunk)
        masks = [torch.nn.functional.pad(item.mask, (pad, 0)) for item, pad in zip(batch, pads, strict=True)]
        output = self._run_trunk(torch.cat([item.hidden for item in batch]), torch.cat(masks), merged)
        start = 0
        for item in batch:
            rows = slice(start, start + item.hidden.shape[0])
            item.output = output[rows]
            append_rows(merged, rows, item.stream.cache, self.trunk, 1)
            start = rows.stop
        self.batched_calls += 1
        self.batched_rows += start
