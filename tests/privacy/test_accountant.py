"""Epsilon is opacus' for the same parameters, grows with steps; the budget rule behaves as configured."""

from __future__ import annotations

import json
import math

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from pydantic import ValidationError

from splitfed.privacy import (
    ChannelSettings,
    PrivacyAccountant,
    PrivacyBudgetExhausted,
    PrivacySettings,
    SplitDefense,
    epsilon_of,
    noise_multiplier_for,
)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_epsilon_equals_opacus_for_the_same_releases(kind):
    ours = PrivacyAccountant(1e-5, kind)
    theirs = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for z in [1.5, 1.5, 2.0, 1.5, 3.0]:
        ours.record(z)
        theirs.step(noise_multiplier=z, sample_rate=1.0)
    assert ours.epsilon() == pytest.approx(theirs.get_epsilon(1e-5), rel=1e-6)


def test_epsilon_grows_with_steps_and_unprotected_release_is_infinite():
    accountant = PrivacyAccountant(1e-5)
    epsilons = []
    for _ in range(6):
        accountant.record(2.0)
        epsilons.append(accountant.epsilon())
    assert all(b > a for a, b in zip(epsilons, epsilons[1:], strict=False))
    accountant.record(0.0)
    assert math.isinf(accountant.epsilon())


def test_state_dict_round_trip_is_plain_numbers():
    accountant = PrivacyAccountant(1e-6, "rdp")
    accountant.record(1.2, 3)
    accountant.record(0.8)
    state = accountant.state_dict()
    assert all(isinstance(v, float | int) for pair in state["history"] for v in pair)
    restored = PrivacyAccountant(1e-6, "rdp")
    restored.load_state_dict(state)
    assert restored.epsilon() == accountant.epsilon()
    with pytest.raises(ValueError, match="delta"):
        PrivacyAccountant(1e-5, "rdp").load_state_dict(state)


def _defense(**kwargs) -> SplitDefense:
    channels = {"forward": ChannelSettings(clip=1.0, sigma=kwargs.pop("sigma", None)),
                "backward": ChannelSettings(clip=1.0, sigma=kwargs.pop("backward_sigma", None))}
    return SplitDefense(PrivacySettings(**channels, seed=0, **kwargs), kwargs.get("planned", 10))


def test_target_epsilon_calibrates_sigma_to_spend_the_budget_over_the_planned_steps():
    steps, tokens = 10, 16
    settings = PrivacySettings(forward=ChannelSettings(clip=1.0), backward=ChannelSettings(clip=2.0),
                               target_epsilon=4.0, max_tokens=tokens, seed=0)
    defense = SplitDefense(settings, steps, batch_size=2)
    z = noise_multiplier_for(4.0, 1e-5, 2 * steps)
    # sensitivity of one release: 2 C sqrt(tokens of the example) forward, 2 C sqrt(tokens of the
    # batch) backward (the loss is averaged over the batch); sigma is in units of C
    assert defense.sigma("forward") == pytest.approx(z * 2 * math.sqrt(tokens))
    assert defense.sigma("backward") == pytest.approx(z * 2 * math.sqrt(2 * tokens))
    mask = torch.ones(2, tokens)
    for _ in range(steps):
        defense.before_step(mask, tokens)
        defense.record_step(mask, tokens)
    reference = RDPAccountant()
    for _ in range(2 * steps):
        reference.step(noise_multiplier=z, sample_rate=1.0)
    assert defense.epsilon == pytest.approx(reference.get_epsilon(1e-5), rel=1e-6)
    assert 3.5 < defense.epsilon <= 4.0
    assert defense.report()["releases"] == 2 * steps
    with pytest.raises(PrivacyBudgetExhausted, match="budget exhausted"):
        defense.before_step(mask, tokens)


def test_budget_rule_warn_keeps_going_and_logs_once(caplog):
    settings = PrivacySettings(forward=ChannelSettings(clip=1.0), backward=ChannelSettings(clip=1.0),
                               target_epsilon=2.0, max_tokens=4, on_budget_exhausted="warn", seed=0)
    defense = SplitDefense(settings, planned_steps=3)
    mask = torch.ones(1, 4)
    with caplog.at_level("WARNING"):
        for _ in range(6):
            defense.before_step(mask, 4)
            defense.record_step(mask, 4)
    assert defense.steps == 6 and defense.epsilon > 2.0
    assert sum("budget exhausted" in r.message for r in caplog.records) == 1


def test_longer_examples_spend_more_under_example_adjacency():
    short, long = _defense(sigma=8.0, backward_sigma=8.0), _defense(sigma=8.0, backward_sigma=8.0)
    short.record_step(torch.ones(1, 4), 4)
    long.record_step(torch.ones(1, 64), 64)
    assert long.epsilon > short.epsilon
    padded = _defense(sigma=8.0, backward_sigma=8.0)
    mask = torch.zeros(1, 64)
    mask[:, -4:] = 1  # padding is not the example's: only real tokens count
    padded.record_step(mask, 64)
    assert padded.epsilon == pytest.approx(short.epsilon)


def test_backward_sensitivity_covers_the_whole_batch_forward_only_the_longest_row():
    mask = torch.ones(4, 9)
    defense = _defense(sigma=6.0, backward_sigma=6.0)
    defense.record_step(mask, 9)
    reference = RDPAccountant()
    reference.step(noise_multiplier=6.0 / (2 * 3), sample_rate=1.0)  # forward: 9 tokens per row
    reference.step(noise_multiplier=6.0 / (2 * 6), sample_rate=1.0)  # backward: 36 tokens per batch
    assert defense.epsilon == pytest.approx(reference.get_epsilon(1e-5), rel=1e-6)


def test_with_epochs_an_example_is_released_once_per_epoch_per_channel():
    settings = PrivacySettings(forward=ChannelSettings(clip=1.0, sigma=4.0),
                               backward=ChannelSettings(clip=1.0, sigma=4.0), unit="token", seed=0)
    per_epoch = SplitDefense(settings, steps_per_epoch=3)
    every_step = SplitDefense(settings)
    for defense in (per_epoch, every_step):
        for _ in range(7):  # two whole epochs and one step of the third
            defense.record_step(torch.ones(2, 5), 5)
    assert per_epoch.report()["releases"] == 6 and every_step.report()["releases"] == 14
    assert per_epoch.epsilon == pytest.approx(epsilon_of([(2.0, 6)], 1e-5), rel=1e-6)
    assert every_step.epsilon == pytest.approx(epsilon_of([(2.0, 14)], 1e-5), rel=1e-6)
    restored = SplitDefense(settings, steps_per_epoch=3)
    restored.load_state_dict(json.loads(json.dumps(per_epoch.state_dict())))
    assert restored.epsilon == per_epoch.epsilon and restored.steps == 7


def test_an_unprotected_channel_makes_epsilon_infinite():
    defense = SplitDefense(PrivacySettings(forward=ChannelSettings(clip=1.0, sigma=5.0), seed=0))
    defense.record_step(torch.ones(1, 4), 4)
    assert math.isinf(defense.epsilon)
    assert defense.report()["epsilon"] == "inf" and defense.report()["unprotected_channels"] == ["backward"]


@pytest.mark.parametrize("settings", [
    {"forward": {"sigma": 1.0}},
    {"forward": {"clip": 1.0}},
    {"forward": {"clip": 1.0}, "target_epsilon": 3.0},
    {"forward": {"clip": -1.0, "sigma": 1.0}},
])
def test_inconsistent_settings_are_refused_with_the_field_named(settings):
    with pytest.raises(ValidationError, match="forward|backward"):
        PrivacySettings.model_validate(settings)


def test_inprocess_federation_reports_each_clients_epsilon_and_stops_at_the_budget():
    from splitfed.federation import FederationSettings, InProcessFederation, PartitionSettings
    from splitfed.models import load_model
    from splitfed.tasks import collate
    from tests.conftest import make_batch

    model, _ = load_model("tiny-llama")
    rows = []
    for seed in range(8):
        batch = make_batch(batch=1, length=6, left_pad=False, seed=seed)
        rows.append({k: v[0].tolist() for k, v in batch.items()})
    privacy = PrivacySettings(forward=ChannelSettings(clip=0.2), backward=ChannelSettings(clip=1e-3),
                              target_epsilon=8.0, max_tokens=6, seed=0)
    settings = FederationSettings(clients=2, rounds=2, local_steps=2, batch_size=2,
                                  partition=PartitionSettings(head=1, tail=1), privacy=privacy)
    federation = InProcessFederation(model, [rows[:4], rows[4:]], lambda r: collate(r, pad_token_id=0),
                                     settings)
    federation.train_round()
    half = [r["epsilon"] for r in federation.privacy_reports()]
    federation.train_round()
    reports = federation.privacy_reports()
    assert len(reports) == 2 and all(r["steps"] == 4 and r["releases"] == 4 for r in reports)  # 2 epochs
    assert all(0 < h < r["epsilon"] <= 8.0 for h, r in zip(half, reports, strict=True))
    with pytest.raises(PrivacyBudgetExhausted):
        federation.train_round()
