"""IID and Dirichlet (label-skew) partitions of a data set among federated clients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfed.tasks import load_task
from splitfed.training.data import iid_shards
from splitfed.training.partitioning import (
    dirichlet_partition,
    iid_partition,
    label_skew,
    partition,
    partition_summary,
)

THREE_CLASSES = [i % 3 for i in range(600)]


def assert_exact_cover(shards: list[list[int]], n_items: int) -> None:
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(n_items))
    assert all(isinstance(i, int) for i in flat)


@settings(max_examples=150, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=300),
    clients=st.integers(1, 8),
    alpha=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_covers_every_index_once(labels: list[int], clients: int, alpha: float, seed: int) -> None:
    for min_per_client in (0, 1):
        try:
            shards = dirichlet_partition(labels, clients, alpha, seed, min_per_client, max_tries=50)
        except ValueError as err:
            # Only a positive minimum may be out of reach (too few items, or a draw too skewed to retry).
            assert min_per_client == 1
            assert "at least 1 each" in str(err) or "in 50 tries" in str(err)
            continue
        assert len(shards) == clients
        assert_exact_cover(shards, len(labels))
        assert all(len(shard) >= min_per_client for shard in shards)
        assert all(shard == sorted(shard) for shard in shards)
        summary = partition_summary(labels, shards)
        for label in set(labels):
            assert sum(counts[label] for counts in summary) == labels.count(label)
        assert 0.0 <= label_skew(labels, shards) <= 1.0


@settings(max_examples=100, deadline=None)
@given(n_items=st.integers(1, 500), clients=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_iid_covers_every_index_once_in_near_equal_shards(n_items: int, clients: int, seed: int) -> None:
    if n_items < clients:
        with pytest.raises(ValueError, match="cannot be shared"):
            iid_partition(n_items, clients, seed)
        return
    shards = iid_partition(n_items, clients, seed)
    assert_exact_cover(shards, n_items)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=50, deadline=None)
@given(n_items=st.integers(1, 200), clients=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
def test_iid_partition_matches_iid_shards(n_items: int, clients: int, seed: int) -> None:
    items = [f"item{i}" for i in range(n_items)]
    if n_items < clients:
        return
    expected = iid_shards(items, clients, seed)
    got = iid_partition(len(items), clients, seed)
    assert [[items[i] for i in shard] for shard in got] == expected


def test_iid_partition_matches_iid_shards_on_real_examples() -> None:
    examples = load_task("cb", "train")
    for clients, seed in [(1, 0), (3, 0), (3, 7), (5, 123)]:
        shards = iid_partition(len(examples), clients, seed)
        assert [[examples[i] for i in shard] for shard in shards] == iid_shards(examples, clients, seed)


def test_reproducible_by_seed_and_different_across_seeds() -> None:
    first = dirichlet_partition(THREE_CLASSES, 5, 0.5, seed=3)
    assert first == dirichlet_partition(THREE_CLASSES, 5, 0.5, seed=3)
    assert first != dirichlet_partition(THREE_CLASSES, 5, 0.5, seed=4)
    assert iid_partition(600, 5, seed=3) == iid_partition(600, 5, seed=3)
    assert iid_partition(600, 5, seed=3) != iid_partition(600, 5, seed=4)


def test_skew_decreases_as_alpha_grows() -> None:
    def skew(alpha: float, seed: int) -> float:
        return label_skew(THREE_CLASSES, dirichlet_partition(THREE_CLASSES, 4, alpha, seed))

    skews = {alpha: [skew(alpha, seed) for seed in range(5)] for alpha in (0.05, 1.0, 100.0)}
    iid_skew = label_skew(THREE_CLASSES, iid_partition(600, 4, 0))
    # Mostly one- or two-class clients at alpha 0.05, near-global distributions at alpha 100, every seed.
    assert min(skews[0.05]) > 0.2
    assert np.mean(skews[0.05]) > 0.4
    assert max(skews[100.0]) < 0.1
    assert min(skews[0.05]) > max(skews[100.0])
    assert np.mean(skews[0.05]) > np.mean(skews[1.0]) > np.mean(skews[100.0])
    assert iid_skew < 0.1


def test_label_skew_and_summary_on_hand_built_shards() -> None:
    labels = [0, 0, 1, 1]
    assert label_skew(labels, [[0, 2], [1, 3]]) == 0.0
    assert label_skew(labels, [[0, 1], [2, 3]]) == pytest.approx(0.5)
    assert partition_summary(labels, [[0, 1], [2, 3]]) == [{0: 2, 1: 0}, {0: 0, 1: 2}]
    assert label_skew(labels, [[0, 1, 2, 3], []]) == 0.0  # empty clients are skipped
    assert label_skew([], [[]]) == 0.0


@pytest.mark.parametrize("min_per_client", [1, 10, 40])
def test_min_per_client_is_respected(min_per_client: int) -> None:
    for seed in range(5):
        shards = dirichlet_partition(THREE_CLASSES, 6, 0.1, seed, min_per_client=min_per_client)
        assert min(len(shard) for shard in shards) >= min_per_client
        assert_exact_cover(shards, 600)


def test_impossible_minimum_gives_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 5 each"):
        dirichlet_partition([0, 1] * 10, 5, 1.0, 0, min_per_client=5)
    # Feasible in principle, but tiny alpha almost never spreads 2 classes over 20 clients evenly enough.
    with pytest.raises(ValueError, match="in 3 tries"):
        dirichlet_partition([0, 1] * 50, 20, 0.01, 0, min_per_client=5, max_tries=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": 0}, "clients must be an integer >= 1"),
        ({"clients": -2}, "clients must be an integer >= 1"),
        ({"clients": 2.5}, "clients must be an integer >= 1"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": -1.0}, "alpha must be a finite number > 0"),
        ({"alpha": float("inf")}, "alpha must be a finite number > 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
        ({"min_per_client": -1}, "min_per_client must be >= 0"),
        ({"labels": [0, 1]}, "cannot give 3 clients"),
        ({"labels": [[0, 1], [1, 0]]}, "flat sequence"),
    ],
)
def test_dirichlet_rejects_bad_inputs(kwargs: dict, message: str) -> None:
    args = {"labels": THREE_CLASSES, "clients": 3, "alpha": 0.5, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        dirichlet_partition(**args)


def test_iid_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="clients must be an integer >= 1"):
        iid_partition(10, 0, 0)
    with pytest.raises(ValueError, match="cannot be shared among 11 clients"):
        iid_partition(10, 11, 0)
    with pytest.raises(ValueError, match="n_items must be >= 0"):
        iid_partition(-1, 1, 0)


def test_dispatcher() -> None:
    assert partition(600, None, "iid", 4, 1) == iid_partition(600, 4, 1)
    assert partition(600, THREE_CLASSES, "dirichlet", 4, 1, alpha=0.2) == dirichlet_partition(
        THREE_CLASSES, 4, 0.2, 1
    )
    with pytest.raises(ValueError, match="unknown partition scheme 'zipf'"):
        partition(600, THREE_CLASSES, "zipf", 4, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs labels"):
        partition(600, None, "dirichlet", 4, 1)
    with pytest.raises(ValueError, match="3 labels for 600 items"):
        partition(600, [0, 1, 2], "dirichlet", 4, 1)


def test_real_cb_labels_dirichlet() -> None:
    examples = load_task("cb", "train")
    labels = [example.label for example in examples]
    shards = partition(examples, None, "dirichlet", clients=3, seed=0, alpha=0.3)
    assert shards == dirichlet_partition(labels, 3, 0.3, 0)
    assert_exact_cover(shards, len(examples))
    assert all(shard for shard in shards)
    summary = partition_summary(labels, shards)
    assert [sum(counts.values()) for counts in summary] == [len(shard) for shard in shards]
    assert all(set(counts) == {0, 1, 2} for counts in summary)
    skewed = np.mean([label_skew(labels, dirichlet_partition(labels, 3, 0.3, seed)) for seed in range(5)])
    iid = np.mean([label_skew(labels, iid_partition(len(labels), 3, seed)) for seed in range(5)])
    assert skewed > iid


def test_client_data_settings_select_dirichlet_shards() -> None:
    from splitfed.models import load_model
    from splitfed.training.task_data import DataSettings, load_client_examples

    _, tokenizer = load_model("tiny-llama")
    common = {"task": "cb", "limit": None, "shards": 3, "max_length": 32}
    shards = [load_client_examples(DataSettings(**common, shard=k, scheme="dirichlet", alpha=0.3), tokenizer)
              for k in range(3)]
    iid = [load_client_examples(DataSettings(**common, shard=k), tokenizer) for k in range(3)]
    assert sum(map(len, shards)) == sum(map(len, iid)) == 250
    assert sorted(map(len, shards)) != sorted(map(len, iid))  # label skew makes uneven shards
