"""Sparse fine-tuning of the server's trunk: entries chosen from the clients' gradients (the same as
scoring the whole model on the same batch), trained with LoRA, checkpointed and restored."""

from __future__ import annotations

import pytest
import torch

from splitfed.checkpoint import load_optimizer_state, optimizer_state
from splitfed.federation import FederationSettings, InProcessFederation, PartitionSettings
from splitfed.models import LoraSpec, SparseSpec, load_model, sparse_parameter_count, sparse_state
from splitfed.models.sparse import allocate, selection_scores, sparse_targets
from splitfed.models.whole import WholeModel
from splitfed.server import LocalTrunk
from splitfed.training.data import shuffled_batches
from splitfed.training.loss import causal_lm_loss
from tests.training.test_training import _collate, _examples

SPEC = SparseSpec(density=0.01, criterion="fisher", selection_batches=1)


@pytest.mark.parametrize("layout", ["three-part", "two-part"])
def test_trunk_selects_from_client_gradients_and_trains(layout):
    model, _ = load_model("tiny-llama")
    examples = _examples(9, seed=1)
    settings = FederationSettings(clients=1, rounds=1, local_steps=3, batch_size=3, seed=7,
                                  partition=PartitionSettings(head=1, tail=0 if layout == "two-part" else 1,
                                                              layout=layout),
                                  adapter=LoraSpec(r=4, alpha=8), optimizer={"lr": 1e-2}, sparse=SPEC)
    federation = InProcessFederation(model, [examples], _collate, settings)
    # the reference: the whole model, the same initial adapters, scored on the same first batch
    whole = WholeModel(model, settings.adapter)
    whole.load_part_states(federation.initial_states())
    first = next(shuffled_batches(examples, 3, settings.seed, _collate))
    trunk_paths = set(sparse_targets(federation.server.trunk, SPEC))
    targets = {p: m for p, m in sparse_targets(whole, SPEC).items() if p in trunk_paths}
    loss = [lambda: causal_lm_loss(whole(first["input_ids"], first["attention_mask"]), first["labels"])]
    expected = allocate(selection_scores(targets, loss, "fisher"), SPEC.density)
    base = {n: p.detach().clone() for n, p in federation.server.trunk.named_parameters()}

    federation.train_round()
    trunk = federation.server.trunk
    state = sparse_state(trunk)
    chosen = {k[: -len(".sparse_indices")]: v for k, v in state.items() if k.endswith(".sparse_indices")}
    assert chosen.keys() == expected.keys()
    assert all(torch.equal(chosen[p], expected[p]) for p in expected)
    values = torch.cat([v for k, v in state.items() if k.endswith(".sparse_values")])
    assert sparse_parameter_count(trunk) == values.numel() > 0
    assert (values != 0).float().mean() > 0.9  # trained in the steps after the selection
    for name, parameter in trunk.named_parameters():
        if name in base and "lora_" not in name:
            assert torch.equal(parameter, base[name]), name  # base weights untouched, none has a grad
            assert not parameter.requires_grad


def test_sparse_trunk_checkpoint_restores_deltas_and_optimizer():
    model, _ = load_model("tiny-llama")
    settings = FederationSettings(clients=1, rounds=1, local_steps=3, batch_size=3, seed=7,
                                  partition=PartitionSettings(head=1, tail=1), adapter=LoraSpec(r=4, alpha=8),
                                  optimizer={"lr": 1e-2}, sparse=SPEC)
    federation = InProcessFederation(model, [_examples(9, seed=1)], _collate, settings)
    federation.train_round()
    trained: LocalTrunk = federation.server
    tensors, meta = optimizer_state(trained.optimizer, "opt")
    again, _ = load_model("tiny-llama")
    fresh = InProcessFederation(again, [_examples(9, seed=1)], _collate, settings).server
    fresh.restore_sparse(sparse_state(trained.trunk))
    load_optimizer_state(fresh.optimizer, tensors, meta, "opt")
    restored = sparse_state(fresh.trunk)
    assert all(torch.equal(restored[k], v) for k, v in sparse_state(trained.trunk).items())
    assert fresh.selection is not None and fresh.selection.done
    assert len(fresh.optimizer.param_groups) == 2  # adapter, then the deltas
