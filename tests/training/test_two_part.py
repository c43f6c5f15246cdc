"""Two-part split (client head only; the server runs the rest, the LM head and the loss): the same
logits, loss, gradients and training as the whole model, and the labels reach the server."""

from __future__ import annotations

import warnings

import pytest
import torch

from splitfed.federation import CentralizedTrainer, FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import LoraSpec, PrivacyWarning, adapter_state, load_model
from splitfed.server.two_part import TwoPartTrunk
from tests.conftest import make_batch
from tests.training.test_training import STEPS, _collate, _examples


def _settings(**overrides) -> FederationSettings:
    values = dict(clients=1, rounds=1, local_steps=STEPS, batch_size=3, seed=7,
                  partition=PartitionSettings(head=1, layout="two-part"), adapter=LoraSpec(r=4, alpha=8),
                  optimizer={"lr": 1e-2})
    values.update(overrides)
    return FederationSettings(**values)


def test_layout_settings():
    assert PartitionSettings(head=1, layout="two-part").partition().tail == 0
    assert PartitionSettings(head=1).partition().tail == 2  # three-part stays the default
    with pytest.raises(ValueError, match="no client tail"):
        PartitionSettings(head=1, tail=2, layout="two-part")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_two_part_training_equals_whole_model_training(name):
    model, _ = load_model(name)
    examples = _examples(9, seed=1)
    settings = _settings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PrivacyWarning)
        federation = InProcessFederation(model, [examples], _collate, settings)
    assert any("labels" in str(w.message) for w in caught if w.category is PrivacyWarning)
    assert isinstance(federation.server, TwoPartTrunk)
    client = federation.clients[0]
    assert not client.tail.layer_indices and not adapter_state(client.tail)  # the client has no tail
    central = CentralizedTrainer(model, examples, _collate, settings, federation.initial_states())
    batch = make_batch(batch=3, length=12, seed=5)
    with torch.no_grad():
        split_logits = federation.logits(batch["input_ids"], batch["attention_mask"])
        whole_logits = central.logits(batch["input_ids"], batch["attention_mask"])
    assert (split_logits - whole_logits).abs().max() <= 1e-5
    before = {**adapter_state(client.head), **adapter_state(federation.server.trunk)}
    split_losses = federation.train_round()
    central_losses = [central.train_step() for _ in range(STEPS)]
    assert split_losses == pytest.approx(central_losses, abs=1e-6)
    after = {**adapter_state(client.head), **adapter_state(federation.server.trunk)}
    expected = adapter_state(central.whole)
    assert set(after) == set(expected)
    assert max((after[k] - before[k]).abs().max().item() for k in after) > 1e-3
    for key, value in expected.items():
        assert (after[key] - value).abs().max().item() <= 1e-6, key
    # what the layout exposes: the server saw every labelled token of the training batches
    assert federation.server.labels_seen > 0


def test_two_part_scoring_matches_the_loss():
    model, _ = load_model("tiny-llama")
    federation = InProcessFederation(model, [_examples(3, 1)], _collate, _settings())
    batch = make_batch(batch=3, length=10, seed=2)
    client = federation.clients[0]
    hidden = client.head(batch["input_ids"], batch["attention_mask"]).detach()
    scored = federation.server.loss("c", hidden, batch["attention_mask"], batch["labels"], train=False)
    from splitfed.training.loss import causal_lm_loss

    logits = federation.server.logits(hidden, batch["attention_mask"])
    assert scored.loss == pytest.approx(float(causal_lm_loss(logits, batch["labels"])), abs=1e-6)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert scored.row_nll.shape == (3,) and int(scored.row_tokens.sum()) == labelled
