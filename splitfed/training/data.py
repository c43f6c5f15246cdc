"""Batches of tokenized examples, reproducible by seed."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Batch = dict[str, Any]


def shuffled_batches(
    examples: Sequence[Any],
    batch_size: int,
    seed: int,
    collate: Callable[[list[Any]], Batch],
    skip: int = 0,
) -> Iterator[Batch]:
    """Endless batches: each epoch is a fresh permutation drawn from ``seed``; the last partial
    batch of an epoch is dropped unless the data is smaller than one batch. ``skip`` passes over the
    first batches without building them (resuming at a data position)."""
    if not examples:
        raise ValueError("no examples to draw batches from")
    rng = random.Random(seed)
    size = min(batch_size, len(examples))
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order) - size + 1, size):
            if skip:
                skip -= 1
                continue
            yield collate([examples[i] for i in order[start : start + size]])


def iid_shards(items: Sequence[Any], clients: int, seed: int) -> list[list[Any]]:
    """Split ``items`` into ``clients`` near-equal shards at random (reproducible by ``seed``)."""
    if len(items) < clients:
        raise ValueError(f"{len(items)} examples cannot be shared among {clients} clients")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [[items[i] for i in order[k::clients]] for k in range(clients)]
