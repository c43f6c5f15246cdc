"""Issue 40, item 2, in memory: weights come from what the server ran (a claimed 6.4e7 has no effect),
the robust strategies of plain rounds (FedMedian, FedTrimmedAvg, clipping) compute what they say, and
the checks of a secure round's average."""

from __future__ import annotations

import threading

import pytest
import torch

from splitfed.aggregation import AggregationError, PlainRounds, SecAggError
from splitfed.aggregation.fedavg import weighted_average
from splitfed.aggregation.robust import (
    AverageGuard,
    RobustAggregationSettings,
    ServedWeights,
    clip_updates,
    coordinate_median,
    robust_average,
    trimmed_mean,
)
from splitfed.aggregation.secagg_client import SecAggClient
from splitfed.aggregation.secagg_round import RoundRoster
from splitfed.aggregation.secure_rounds import ADVERTISE, MASKED, REVEAL, SHARE, SecureRounds


def _states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"a": torch.randn(3, 4, generator=generator), "b": torch.randn(5, generator=generator)}
            for _ in range(n)]


def test_coordinate_median_and_trimmed_mean_match_numpy_definitions():
    values = [torch.tensor([1.0, 10.0]), torch.tensor([2.0, -5.0]), torch.tensor([100.0, 0.0]),
              torch.tensor([3.0, 1.0])]
    assert torch.equal(coordinate_median(values), torch.tensor([2.5, 0.5]))  # even count: middle mean
    assert torch.equal(coordinate_median(values[:3]), torch.tensor([2.0, 0.0]))
    # beta 0.25 of 4 cuts one value from each end of every coordinate
    assert torch.allclose(trimmed_mean(values, 0.25), torch.tensor([2.5, 0.5]))
    assert torch.allclose(trimmed_mean(values, 0.0), torch.stack(values).mean(0))
    assert torch.allclose(trimmed_mean(values[:3], 0.2), torch.stack(values[:3]).mean(0))  # int(0.6) = 0
    with pytest.raises(ValueError):
        trimmed_mean(values[:2], 0.5)  # would cut both values


def test_robust_strategies_shrug_off_one_huge_client():
    honest = _states(4)
    poisoned = [*honest, {k: torch.full_like(v, 1e6) for k, v in honest[0].items()}]
    weights = [1.0] * 5
    median = robust_average(poisoned, weights, RobustAggregationSettings(strategy="fedmedian"))
    trimmed = robust_average(poisoned, weights, RobustAggregationSettings(strategy="fedtrimmedavg",
                                                                          trim_beta=0.2))
    for result in (median, trimmed):
        assert all(float(v.abs().max()) < 10 for v in result.values())
    fedavg = robust_average(poisoned, weights, RobustAggregationSettings())
    assert float(fedavg["a"].abs().max()) > 1e5  # the default is FedAvg, unchanged
    expected = weighted_average(poisoned, weights)
    assert all(torch.equal(fedavg[k], expected[k]) for k in expected)


def test_clipping_bounds_each_update_by_the_median_update_norm():
    reference = {"a": torch.zeros(3, 4), "b": torch.zeros(5)}
    states = [{k: torch.full_like(v, scale) for k, v in reference.items()} for scale in (1.0, 2.0, 3.0, 50.0)]
    clipped = clip_updates(states, reference, ratio=1.5)
    def norm(state: dict[str, torch.Tensor]) -> float:
        return float(torch.cat([state["a"].flatten(), state["b"]]).norm())

    norms = [norm(s) for s in clipped]
    median = float(torch.tensor([norm(s) for s in states]).median())
    assert clipped[0] is states[0] and clipped[1] is states[1]  # within the bound: untouched
    assert max(norms) == pytest.approx(1.5 * median)
    ratio = clipped[3]["a"] / states[3]["a"]  # scaled, direction kept
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))
    settings = RobustAggregationSettings(clip_norm_ratio=1.0)
    result = robust_average(states, [1.0] * 4, settings, previous=reference)
    assert float(result["a"].max()) <= 2.0 + 1e-6  # the 50 is clipped to the median update's norm


def test_served_weights_bound_the_claims():
    served = ServedWeights(max_weight=100.0)
    served.served("alice", 8)
    served.served("alice", 4)
    served.served("mallory", 2)
    assert served.weights({"alice": 12.0, "mallory": 6.4e7}) == {"alice": 12.0, "mallory": 2.0}
    served.served("alice", 500)
    assert served.grant(["alice", "mallory"]) == {"alice": 100.0, "mallory": 0.0}  # capped; nothing new
    # a round in which the server ran nothing for anyone (a restart): the claims count, capped
    assert served.weights({"alice": 3.0, "bob": 5.0, "mallory": 6.4e7}) == {"alice": 3.0, "bob": 5.0,
                                                                             "mallory": 100.0}


def test_a_claimed_weight_means_nothing_in_a_plain_round():
    served = ServedWeights()
    rounds = PlainRounds(lambda: {"alice", "bob", "mallory"}, timeout_s=10.0, weights=served)
    states = _states(3)
    for name, rows in (("alice", 10), ("bob", 10), ("mallory", 10)):
        served.served(name, rows)
    results = {}
    claims = {"alice": 10.0, "bob": 10.0, "mallory": 6.4e7}
    def submit(name: str, state: dict[str, torch.Tensor]) -> None:
        results[name] = rounds.submit(name, 1, 0, (state, claims[name]))

    threads = [threading.Thread(target=submit, args=(n, s)) for n, s in zip(claims, states, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    expected = weighted_average(states, [1.0, 1.0, 1.0])  # every client trained 10 rows
    average, contributors = results["alice"]
    assert contributors == 3
    assert all(torch.allclose(average[k], expected[k]) for k in expected)


def _secure_round(rounds: SecureRounds, values: dict[str, tuple[dict, float]]) -> dict[str, object]:
    results: dict[str, object] = {}

    def run(name: str) -> None:
        state, weight = values[name]
        client = SecAggClient(name, None, 2)
        try:
            blob, threshold = rounds.submit(name, 1, ADVERTISE, client.advertise())
            client.threshold = threshold
            shares, granted = rounds.submit(name, 1, SHARE, client.share_keys(RoundRoster.from_bytes(blob)))
            client.receive_shares(shares)
            survivors, dropped = rounds.submit(name, 1, MASKED, (client.mask(state, weight), weight))
            results[name] = rounds.submit(name, 1, REVEAL, client.unmask_shares(survivors, dropped))
        except AggregationError as error:
            results[name] = error

    threads = [threading.Thread(target=run, args=(name,)) for name in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_a_claimed_weight_means_nothing_under_secure_aggregation():
    served = ServedWeights()
    members = {"alice", "bob", "mallory"}
    rounds = SecureRounds(lambda: members, timeout_s=20.0, weights=served, straggler_s=2.0)
    states = _states(3)
    for name in members:
        served.served(name, 10)
    results = _secure_round(rounds, {"alice": (states[0], 10.0), "bob": (states[1], 10.0),
                                     "mallory": (states[2], 6.4e7)})
    assert isinstance(results["mallory"], AggregationError) and "exceeds" in str(results["mallory"])
    expected = weighted_average(states[:2], [1.0, 1.0])  # mallory left out, unmasked from the shares
    for name in ("alice", "bob"):
        average, contributors = results[name]
        assert contributors == 2
        assert all((average[k] - expected[k]).abs().max() <= 1e-5 for k in expected)


def test_the_average_guard_checks_scale_from_round_1_and_moves_after():
    trunk = {"t": torch.full((100,), 0.05)}
    guard = AverageGuard(RobustAggregationSettings(max_scale_ratio=10.0, max_step_ratio=4.0),
                         max_norm_ratio=None, reference=lambda: trunk)
    with pytest.raises(SecAggError, match="trunk adapter"):
        guard.check(1, {"a": torch.full((50,), 100.0)})
    assert guard.status()["rounds_rejected"] == 1
    guard.check(2, {"a": torch.full((50,), 0.05)})  # accepted; nothing to compare with yet
    for index in range(3, 6):  # honest rounds move 0.01 a round
        guard.check(index, {"a": torch.full((50,), 0.05 + 0.01 * (index - 2))})
    assert guard.status()["rounds_rejected_in_a_row"] == 0
    with pytest.raises(SecAggError, match="moved"):
        guard.check(6, {"a": torch.full((50,), 0.08 + 0.2)})  # 20 x the usual move
    status = guard.status()
    assert status["rounds_rejected_in_a_row"] == 1 and "round 6" in status["last_round_rejection"]
    guard.check(7, {"a": torch.full((50,), 0.10)})  # honest again, two rounds of moves: accepted
    assert guard.status()["rounds_rejected_in_a_row"] == 0
