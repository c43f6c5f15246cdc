"""A half-precision base (dtype: bfloat16 / float16): the split still equals the whole model in that
dtype, adapters and their optimizer stay float32, and float32 hidden states from the wire are taken in
and their gradients given back in float32."""

from __future__ import annotations

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, positions_from_mask, split_model
from splitfed.server import LocalTrunk
from splitfed.training.optim import OptimizerSettings
from tests.conftest import make_batch


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_split_equals_its_whole_model_and_trains_float32_adapters(dtype):
    model, _ = load_model("tiny-llama", dtype=dtype)
    reference, _ = load_model("tiny-llama")  # float32
    batch = make_batch(left_pad=True)
    positions = positions_from_mask(batch["attention_mask"], batch["input_ids"].shape[1], 0, "cpu")
    whole = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=positions).logits
    exact = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=positions).logits
    split = split_model(model, Partition(1, 1))
    for part in split.parts.values():
        init_adapter(part, LoraSpec(r=2), 0)  # lora_B = 0: the same function as the base
    logits = split(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert logits.dtype == dtype and split.trunk.compute_dtype == dtype
    assert (logits[real].float() - whole[real].float()).abs().max() <= 1e-2  # same dtype: same arithmetic
    scale = exact[real].abs().max()
    assert (logits[real].float() - exact[real]).abs().max() <= 0.05 * scale  # half precision's error
    trainable = [p for part in split.parts.values() for p in part.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)

    trunk = LocalTrunk(split.trunk)
    hidden = split.head(batch["input_ids"], batch["attention_mask"]).detach().float()  # as the wire gives it
    out = trunk.forward("c", hidden, batch["attention_mask"])
    grad_in = trunk.backward("c", torch.ones_like(out).float())
    assert out.dtype == dtype and grad_in.dtype == torch.float32 and torch.isfinite(grad_in).all()

    client = SplitClient("c", split.head, split.tail, LocalTrunk(split.trunk), OptimizerSettings(lr=1e-2))
    losses = [client.train_step(batch) for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
