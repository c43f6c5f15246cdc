"""Client-batch: one trunk step over three clients' rows equals a centralized step on their
concatenated batch; a client that sends no gradient is left out cleanly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from splitfed.models import LoraSpec, Partition, adapter_state, init_adapter, load_model, split_model
from splitfed.models.whole import WholeModel
from splitfed.server.client_batch import BatchedTrunk, ClientBatchError, ForwardItem
from splitfed.training.loss import causal_lm_loss
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from tests.conftest import make_batch

SPEC = LoraSpec(r=4, alpha=8)
OPTIMIZER = OptimizerSettings(lr=1e-3)  # Adam's first step is ~lr x sign(g): keep it small


def _client_batches():
    """Three clients, different batch sizes and sequence lengths, with left padding."""
    return {"a": make_batch(batch=2, length=9, seed=1), "b": make_batch(batch=3, length=14, seed=2),
            "c": make_batch(batch=1, length=6, left_pad=False, seed=3)}


def _labelled(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != -100).sum())


def randomized_split(base):
    """Seeded adapters on every part, with a random LoRA B (it starts at zero): every adapter matters."""
    split = split_model(replicate(base), Partition(1, 1))
    for part in split.parts.values():
        init_adapter(part, SPEC, 5)
        with torch.no_grad():
            for name, parameter in part.named_parameters():
                if "lora_B" in name:
                    generator = torch.Generator().manual_seed(sum(map(ord, name)))
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return split


def _split_step(name: str, batches: dict, drop_at_backward: str | None = None):
    base, _ = load_model(name)
    split = randomized_split(base)
    initial = [adapter_state(p) for p in split.parts.values()]
    trunk = BatchedTrunk(split.trunk, OPTIMIZER)
    items, hidden_in = [], {}
    for cid, batch in batches.items():
        hidden_in[cid] = split.head(batch["input_ids"], batch["attention_mask"])
        items.append(ForwardItem(cid, hidden_in[cid].detach(), batch["attention_mask"],
                                 _labelled(batch["labels"])))
    outputs = trunk.forward(items)
    grads = {}
    for cid, batch in batches.items():
        if cid == drop_at_backward:
            continue
        hidden = outputs[cid].requires_grad_(True)
        causal_lm_loss(split.tail(hidden, batch["attention_mask"]), batch["labels"]).backward()
        grads[cid] = hidden.grad
    grads_in = trunk.backward(grads)
    return base, initial, adapter_state(split.trunk), grads_in, split


def _concatenate(batches: dict) -> dict:
    length = max(b["input_ids"].shape[1] for b in batches.values())

    def pad(t, value):
        return torch.cat([F.pad(b[t], (length - b[t].shape[1], 0), value=value) for b in batches.values()])

    return {"input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", -100)}


def _centralized_trunk_after_step(base, initial, batch) -> dict[str, torch.Tensor]:
    whole = WholeModel(replicate(base), SPEC)
    whole.load_part_states(initial)
    optimizer = OPTIMIZER.build(whole.parameters())
    causal_lm_loss(whole(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
    optimizer.step()
    return adapter_state(whole)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt2"])
def test_one_client_batch_step_equals_a_centralized_step_on_the_concatenated_batch(name):
    batches = _client_batches()
    base, initial, trunk_after, _, _ = _split_step(name, batches)
    central = _centralized_trunk_after_step(base, initial, _concatenate(batches))
    moved = max((trunk_after[k] - initial[1][k]).abs().max().item() for k in trunk_after)
    assert moved > 5e-4
    for key, value in trunk_after.items():
        assert (value - central[key]).abs().max().item() <= 1e-5, key


def test_input_gradients_are_each_clients_own():
    """Each client gets d(its own mean loss)/d(its hidden state), as if it had been alone."""
    batches = _client_batches()
    _, _, _, together, _ = _split_step("tiny-llama", batches)
    for cid, batch in batches.items():
        _, _, _, alone, _ = _split_step("tiny-llama", {cid: batch})
        assert (together[cid] - alone[cid]).abs().max().item() <= 1e-6, cid
        assert together[cid].abs().sum() > 0


def test_a_client_without_gradient_is_left_out_cleanly():
    """b's rows go through the forward but b sends no gradient: the update is the centralized step
    on a and c alone."""
    batches = _client_batches()
    base, initial, trunk_after, grads_in, _ = _split_step("tiny-llama", batches, drop_at_backward="b")
    assert set(grads_in) == {"a", "c"}
    others = {k: v for k, v in batches.items() if k != "b"}
    central = _centralized_trunk_after_step(base, initial, _concatenate(others))
    for key, value in trunk_after.items():
        assert (value - central[key]).abs().max().item() <= 1e-5, key


def test_misuse_is_refused():
    base, _ = load_model("tiny-llama")
    split = split_model(replicate(base), Partition(1, 1))
    init_adapter(split.trunk, SPEC, 0)
    trunk = BatchedTrunk(split.trunk)
    item = ForwardItem("a", torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.long), 3)
    with pytest.raises(ClientBatchError):
        trunk.forward([item, item])
    with pytest.raises(ClientBatchError):
        trunk.forward([ForwardItem("a", item.hidden, item.attention_mask, 0)])
    out = trunk.forward([item])
    with pytest.raises(ClientBatchError):
        trunk.forward([item])
    with pytest.raises(ClientBatchError, match="shape"):
        trunk.backward({"a": torch.zeros(1, 5, 64)})
    trunk.abandon()
    assert out["a"].shape == (1, 4, 64)
