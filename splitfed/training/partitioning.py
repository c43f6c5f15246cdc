"""Split a data set among federated clients: IID shards or label-skewed (Dirichlet) non-IID shards.

Every function works on indices, so the same split applies to examples, their labels or anything
aligned with them; :func:`partition_summary` and :func:`label_skew` describe a split for logs and tests.
"""

from __future__ import annotations

import math
import numbers
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

Scheme = Literal["iid", "dirichlet"]
SCHEMES: tuple[str, ...] = ("iid", "dirichlet")


def _check_clients(clients: int) -> None:
    if isinstance(clients, bool) or not isinstance(clients, int | np.integer) or clients < 1:
        raise ValueError(f"clients must be an integer >= 1, got {clients!r}")


def iid_partition(n_items: int, clients: int, seed: int) -> list[list[int]]:
    """Indices ``0..n_items-1`` in ``clients`` near-equal shards of a seeded random permutation.

    The shards are exactly those of :func:`splitfed.training.data.iid_shards` for the same arguments.
    """
    _check_clients(clients)
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    if n_items < clients:
        raise ValueError(f"{n_items} examples cannot be shared among {clients} clients")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    return [order[k::clients] for k in range(clients)]


def dirichlet_partition(
    labels: Sequence[int],
    clients: int,
    alpha: float,
    seed: int,
    min_per_client: int = 1,
    max_tries: int = 1000,
) -> list[list[int]]:
    """Label-skewed shards of indices into ``labels``: each class's shuffled indices are split among
    the clients by proportions drawn from Dirichlet(``alpha``).

    Small ``alpha`` concentrates each class on few clients; large ``alpha`` approaches an IID split.
    Draws are repeated (at most ``max_tries`` times) until every client holds ``min_per_client``
    items. Every index appears in exactly one shard; shards are sorted; the result depends only on
    the arguments.
    """
    _check_clients(clients)
    valid_alpha = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
    if not (valid_alpha and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if min_per_client < 0:
        raise ValueError(f"min_per_client must be >= 0, got {min_per_client}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a flat sequence, got shape {array.shape}")
    n_items = len(array)
    if n_items < clients * min_per_client:
        raise ValueError(
            f"{n_items} items cannot give {clients} clients at least {min_per_client} each "
            f"(need {clients * min_per_client})"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(array == label) for label in np.unique(array)]
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for indices in by_class:
            indices = rng.permutation(indices)
            proportions = rng.dirichlet(np.full(clients, float(alpha)))
            cuts = np.floor(np.cumsum(proportions)[:-1] * len(indices)).astype(int)
            for shard, part in zip(shards, np.split(indices, np.clip(cuts, 0, len(indices))), strict=True):
                shard.extend(part.tolist())
        if min(len(shard) for shard in shards) >= min_per_client:
            return [sorted(shard) for shard in shards]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split of {n_items} items gave each of {clients} clients "
        f"at least {min_per_client} items in {max_tries} tries; raise alpha or lower clients/min_per_client"
    )


def partition_summary(labels: Sequence[int], shards: Sequence[Sequence[int]]) -> list[dict[int, int]]:
    """Per client, the count of each label (every label of ``labels``, zeros included, in sorted order)."""
    classes = sorted({int(label) for label in labels})
    summary = []
    for shard in shards:
        counts = Counter(int(labels[i]) for i in shard)
        summary.append({label: counts.get(label, 0) for label in classes})
    return summary


def label_skew(labels: Sequence[int], shards: Sequence[Sequence[int]]) -> float:
    """Mean total-variation distance between each non-empty client's label distribution and that of
    ``labels`` as a whole: 0 for identical distributions, up to 1 for disjoint ones."""
    if len(labels) == 0:
        return 0.0
    overall = Counter(int(label) for label in labels)
    global_dist = {label: count / len(labels) for label, count in overall.items()}
    distances = []
    for counts in partition_summary(labels, shards):
        total = sum(counts.values())
        if total:
            distances.append(0.5 * sum(abs(counts[c] / total - p) for c, p in global_dist.items()))
    return float(np.mean(distances)) if distances else 0.0


def partition(
    items_or_n: int | Sequence[Any],
    labels: Sequence[int] | None,
    scheme: Scheme,
    clients: int,
    seed: int,
    alpha: float = 0.5,
    min_per_client: int = 1,
) -> list[list[int]]:
    """Index shards by ``scheme``: :func:`iid_partition` or :func:`dirichlet_partition`.

    ``items_or_n`` is the item count or the items; for ``"dirichlet"`` with ``labels=None`` the labels
    are read from the items' ``.label`` (e.g. :class:`~splitfed.tasks.ClozeExample`). ``alpha`` and
    ``min_per_client`` apply to ``"dirichlet"`` only.
    """
    n_items = items_or_n if isinstance(items_or_n, int) else len(items_or_n)
    if labels is not None and len(labels) != n_items:
        raise ValueError(f"{len(labels)} labels for {n_items} items")
    if scheme == "iid":
        return iid_partition(n_items, clients, seed)
    if scheme == "dirichlet":
        if labels is None:
            if isinstance(items_or_n, int):
                raise ValueError("the dirichlet scheme needs labels (or items with a .label)")
            labels = [item.label for item in items_or_n]
        return dirichlet_partition(labels, clients, alpha, seed, min_per_client=min_per_client)
    raise ValueError(f"unknown partition scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
