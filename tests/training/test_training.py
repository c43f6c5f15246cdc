"""Split training equals unsplit training; federated rounds average as FedAvg says."""

from __future__ import annotations

import pytest
import torch

from splitfed.aggregation.fedavg import weighted_average
from splitfed.federation import CentralizedTrainer, FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import LoraSpec, PrefixSpec, adapter_state, load_model
from splitfed.models.adapters import PROMPT_KEY
from tests.conftest import TINY, make_batch

STEPS = 4


def _examples(count: int, seed: int) -> list[dict]:
    """Single-row examples (lists) of varying lengths, collated later with left padding."""
    rows = []
    for index in range(count):
        batch = make_batch(batch=1, length=6 + (index * 5) % 9, left_pad=False, seed=seed * 100 + index)
        rows.append({"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()})
    return rows


def _collate(rows: list[dict]) -> dict:
    from splitfed.tasks import collate

    return collate(rows, pad_token_id=0)


def _settings(**overrides) -> FederationSettings:
    values = dict(clients=1, rounds=1, local_steps=STEPS, batch_size=3, seed=7,
                  partition=PartitionSettings(head=1, tail=1), adapter=LoraSpec(r=4, alpha=8))
    values.update(overrides)
    return FederationSettings(**values)


def _whole_state(federation: InProcessFederation) -> dict[str, torch.Tensor]:
    client = federation.clients[0]
    state: dict[str, torch.Tensor] = {}
    prompts = []
    for part in (client.head, federation.server.trunk, client.tail):
        part_state = adapter_state(part)
        if PROMPT_KEY in part_state:
            prompts.append(part_state.pop(PROMPT_KEY))
        state.update(part_state)
    if prompts:
        state[PROMPT_KEY] = torch.cat(prompts, dim=1)
    return state


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(
    "spec", [LoraSpec(r=4, alpha=8), PrefixSpec(num_virtual_tokens=2)], ids=["lora", "prefix"]
)
def test_split_training_equals_whole_model_training(name, spec):
    """Several AdamW steps of split training (head/trunk/tail, three optimizers, trunk behind the
    endpoint) leave the same adapters as the same steps on the unsplit model."""
    model, _ = load_model(name)
    examples = _examples(9, seed=1)
    settings = _settings(adapter=spec, optimizer={"lr": 1e-2})
    federation = InProcessFederation(model, [examples], _collate, settings)
    central = CentralizedTrainer(model, examples, _collate, settings, federation.initial_states())
    before = _whole_state(federation)
    split_losses = federation.train_round()
    central_losses = [central.train_step() for _ in range(STEPS)]

    assert split_losses == pytest.approx(central_losses, abs=1e-6)
    after = _whole_state(federation)
    from splitfed.models import adapter_state as state_of

    central_state = state_of(central.whole)
    assert set(after) == set(central_state)
    moved = max((after[k] - before[k]).abs().max().item() for k in after)
    assert moved > 1e-3, "training did not change the adapters"
    for key, value in central_state.items():
        assert (after[key] - value).abs().max().item() <= 1e-6, key


def test_clients_share_adapters_after_each_round_and_fedavg_is_weighted():
    model, _ = load_model("tiny-llama")
    shards = [_examples(3, seed=2), _examples(6, seed=3), _examples(9, seed=4)]
    settings = _settings(clients=3, local_steps=2, batch_size=2, optimizer={"lr": 1e-2})
    federation = InProcessFederation(model, shards, _collate, settings)
    starts = [c.adapter_states() for c in federation.clients]
    for state in starts[1:]:
        for part in ("head", "tail"):
            for key, value in state[part].items():
                assert torch.equal(value, starts[0][part][key])

    original = federation.aggregate
    local: list[dict] = []
    federation.aggregate = lambda: (local.extend(c.adapter_states() for c in federation.clients), original())
    federation.train_round()
    expected = {part: weighted_average([s[part] for s in local], [3, 6, 9]) for part in ("head", "tail")}
    different = any(
        not torch.equal(local[0]["head"][k], local[1]["head"][k]) for k in local[0]["head"]
    )
    assert different, "clients trained on different shards should diverge within a round"
    for client in federation.clients:
        states = client.adapter_states()
        for part in ("head", "tail"):
            for key, value in states[part].items():
                assert torch.allclose(value, expected[part][key], atol=1e-7), key


def test_weighted_average_by_hand_and_errors():
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([3.0, 6.0])}
    assert torch.allclose(weighted_average([a, b], [1, 3])["w"], torch.tensor([2.5, 5.0]))
    with pytest.raises(ValueError):
        weighted_average([a, b], [1])
    with pytest.raises(ValueError):
        weighted_average([a, {"v": torch.zeros(2)}], [1, 1])
    with pytest.raises(ValueError):
        weighted_average([a, b], [0, 0])


def test_federation_rejects_mismatched_shards():
    model, _ = load_model("tiny-llama")
    with pytest.raises(ValueError, match="shards"):
        InProcessFederation(model, [_examples(3, 1)], _collate, _settings(clients=2))
    with pytest.raises(ValueError, match="at least one"):
        InProcessFederation(model, [[]], _collate, _settings())
