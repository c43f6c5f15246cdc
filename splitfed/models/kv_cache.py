"""KV caches of one model part: their size, and batching several clients' caches for one decode step.

A part's ``DynamicCache`` holds keys and values (batch, kv_heads, tokens, head_dim) for the part's
own layers (global indices); the other layers stay empty. To run the decode steps of several clients
in one call, their caches are left-padded to a common length and concatenated along the batch
(``merge_caches``); after the call each client's cache gets its new key/value column back
(``append_rows``). Padded positions are masked out, so the result equals separate calls up to
floating-point summation order.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from splitfed.models.families import family_of_config, hidden_size
from splitfed.models.parts import SplitPart


def _layers(cache: DynamicCache, part: SplitPart) -> list:
    return [cache.layers[index] for index in part.layer_indices]


def cached_tokens(cache: DynamicCache, part: SplitPart) -> int:
    """Positions held in ``cache`` (virtual prefix tokens included)."""
    if not part.layer_indices:
        return 0
    return int(cache.get_seq_length(part.layer_indices[0]))


def cache_bytes(cache: DynamicCache, part: SplitPart) -> int:
    """Bytes of the key and value tensors ``cache`` holds for ``part``."""
    total = 0
    for layer in _layers(cache, part):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def bytes_per_token(part: SplitPart, dtype: torch.dtype = torch.float32) -> int:
    """Cache bytes one token of one sequence adds to ``part``'s cache."""
    config = part.config
    heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    hidden = hidden_size(config)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return len(part.layer_indices) * 2 * kv_heads * head_dim * itemsize


def layer_types(config: Any) -> list[str]:
    """The attention kind (full, sliding) of every layer of the model ``config``."""
    return family_of_config(config).layer_types(config)


def prefill_transient_bytes(part: SplitPart, batch: int, new: int, past: int = 0) -> int:
    """Memory a generation step of ``batch`` x ``new`` positions (after ``past`` cached ones) uses beyond
    the cache while the trunk computes: one layer's activations at a time (the residual stream, norms,
    q/k/v/o, rotary tables and the MLP's intermediate tensors: about 10 x hidden + 4 x intermediate values
    a position, measured 4.4 KiB a position on tiny-llama against 4.5 estimated), the attention masks,
    and, with eager attention, the score matrix (SDPA's CPU and CUDA kernels work in tiles and keep
    none)."""
    config = part.config
    itemsize = torch.empty((), dtype=part.compute_dtype).element_size()
    width = hidden_size(config)
    intermediate = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                       or 4 * width)
    activations = batch * new * (10 * width + 4 * intermediate) * itemsize
    # the attention mask, materialised as a float (batch, 1, new, past + new) tensor once rows are padded
    # or a layer slides (one per attention kind of the part's layers)
    kinds = len({layer_types(config)[index] for index in part.layer_indices}) or 1
    masks = kinds * batch * new * (past + new) * itemsize
    scores = 0
    if getattr(config, "_attn_implementation", None) == "eager":
        heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
        scores = 2 * batch * heads * new * (past + new) * itemsize  # the scores and their softmax
    return activations + masks + scores


def batchable(cache: DynamicCache, part: SplitPart) -> bool:
    """Whether ``cache`` can join a merged decode batch: plain (non-sliding) layers, no prefix."""
    if part.prefix is not None or not part.layer_indices:
        return False
    return all(type(layer).__name__ == "DynamicLayer" and not getattr(layer, "is_sliding", False)
               and getattr(layer, "keys", None) is not None for layer in _layers(cache, part))


def merge_caches(caches: list[DynamicCache], part: SplitPart) -> tuple[DynamicCache, list[int]]:
    """One cache holding every cache's rows, left-padded to the longest; returns it and the padding
    added to each cache's rows (for the attention mask)."""
    lengths = [cached_tokens(cache, part) for cache in caches]
    longest = max(lengths)
    merged = part.new_cache()
    for index in part.layer_indices:
        keys, values = [], []
        for cache, length in zip(caches, lengths, strict=True):
            layer = cache.layers[index]
            pad = longest - length
            keys.append(torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(layer.values, (0, 0, pad, 0)))
        merged.update(torch.cat(keys), torch.cat(values), index)
    return merged, [longest - length for length in lengths]


def append_rows(merged: DynamicCache, rows: slice, cache: DynamicCache, part: SplitPart, new: int) -> None:
    """Append the last ``new`` positions of ``merged``'s ``rows`` to ``cache``."""
    for index in part.layer_indices:
        layer = merged.layers[index]
        cache.update(layer.keys[rows, :, -new:].clone(), layer.values[rows, :, -new:].clone(), index)


def repeated_cache(cache: DynamicCache, repeats: int) -> DynamicCache:
    """A copy of ``cache`` with each row repeated ``repeats`` times in place (row i -> rows i*r..i*r+r-1)."""
    copy = deepcopy(cache)
    copy.batch_repeat_interleave(repeats)
    return copy


def rewindable(cache: DynamicCache, part: SplitPart) -> bool:
    """Whether ``cache`` can drop its last positions: every layer keeps all its past (a sliding-window
    layer only until its window is full)."""
    for index in part.layer_indices:
        layer = cache.layers[index]
        if not getattr(layer, "is_initialized", False):
            continue
        window = getattr(layer, "sliding_window", None)
        full = window is not None and layer.get_seq_length() >= window
        if full and not getattr(layer, "record_past", False):
            return False
    return True


def rewind_cache(cache: DynamicCache, part: SplitPart, tokens: int) -> None:
    """Keep the first ``tokens`` real positions of ``cache`` (virtual prefix tokens stay), dropping the
    rest: a speculative step's rejected draft tokens. Raises ``ValueError`` when a layer cannot."""
    if not rewindable(cache, part):
        raise ValueError("a full sliding-window cache cannot drop positions")
    keep = tokens + part.prefix_length
    for index in part.layer_indices:
        layer = cache.layers[index]
        if getattr(layer, "is_initialized", False):
            held = layer.get_seq_length()
            if keep > held:
                raise ValueError(f"cannot rewind to {tokens} positions: the cache holds "
                                 f"{held - part.prefix_length}")
            if keep < held:
                layer.crop(keep - held)
