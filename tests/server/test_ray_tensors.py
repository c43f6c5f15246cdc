"""Tensors through Ray as numpy arrays, and actors over one shared frozen base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitfed.models import LoraSpec, Partition, init_adapter, split_model
from splitfed.server.ray_tensors import frozen_arrays, share_frozen, tensor_from_array, tensor_to_array
from splitfed.training.replicate import replicate

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool]


def _sample(dtype: torch.dtype) -> torch.Tensor:
    values = torch.randn(3, 5, generator=torch.Generator().manual_seed(3)) * 7
    return values > 0 if dtype == torch.bool else values.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_tensor_comes_back_with_its_values_dtype_and_shape(dtype):
    tensor = _sample(dtype)
    back = tensor_from_array(tensor_to_array(tensor))
    assert back.dtype == dtype and back.shape == tensor.shape
    assert torch.equal(back, tensor)


def test_views_scalars_and_gradients_survive_and_the_copy_is_its_own():
    base = torch.randn(4, 6, requires_grad=True)
    for tensor in (base.detach().t(), base.detach()[:, ::2], torch.tensor(2.5)):  # non-contiguous, 0-dim
        assert torch.equal(tensor_from_array(tensor_to_array(tensor)), tensor)
    back = tensor_from_array(tensor_to_array(base))
    assert back.requires_grad and back.is_leaf
    payload = tensor_to_array(torch.zeros(3))
    payload[1].flags.writeable = False  # as the object store hands it over
    rebuilt = tensor_from_array(payload)
    rebuilt += 1  # memory of its own: writable, and the array is untouched
    assert payload[1].sum() == 0


def test_sparse_tensors_are_refused():
    with pytest.raises(TypeError, match="only dense tensors"):
        tensor_to_array(torch.eye(3).to_sparse())


def _trunk(base, seed: int):
    trunk = split_model(replicate(base), Partition(1, 1)).trunk
    init_adapter(trunk, LoraSpec(r=4, alpha=8), seed)
    return trunk


def test_a_trunk_over_shared_arrays_computes_as_the_original_without_copying(tiny_llama):
    source = _trunk(tiny_llama, 1)
    arrays = frozen_arrays(source)
    assert arrays and all(isinstance(a, np.ndarray) for a in arrays.values())
    for array in arrays.values():
        array.flags.writeable = False
    other = _trunk(tiny_llama, 1)
    with torch.no_grad():  # different frozen weights before sharing
        for parameter in other.parameters():
            if not parameter.requires_grad:
                parameter.mul_(0.5)
    share_frozen(other, arrays)
    frozen = [(n, p) for n, p in other.named_parameters() if not p.requires_grad]
    assert all(p.data_ptr() == arrays[n].ctypes.data for n, p in frozen)  # views, no copy
    hidden = torch.randn(2, 5, tiny_llama.config.hidden_size, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.long)
    assert torch.equal(other(hidden, mask), source(hidden, mask))


def test_a_bfloat16_base_is_shared_as_its_bits(tiny_llama):
    source = _trunk(tiny_llama, 1).to(torch.bfloat16)
    other = _trunk(tiny_llama, 1).to(torch.bfloat16)
    with torch.no_grad():
        for parameter in other.parameters():
            if not parameter.requires_grad:
                parameter.zero_()
    share_frozen(other, frozen_arrays(source))
    for (name, mine), theirs in zip(other.named_parameters(), source.parameters(), strict=True):
        assert mine.dtype == torch.bfloat16 and torch.equal(mine, theirs), name


def test_shared_arrays_of_another_architecture_are_refused(tiny_llama):
    trunk = _trunk(tiny_llama, 1)
    arrays = frozen_arrays(trunk)
    name = next(iter(arrays))
    with pytest.raises(ValueError, match="other parameters"):
        share_frozen(_trunk(tiny_llama, 1), {k: v for k, v in arrays.items() if k != name})
    with pytest.raises(ValueError, match=f"shared frozen {name}"):
        share_frozen(_trunk(tiny_llama, 1), {**arrays, name: arrays[name][..., :1].copy()})


def test_tensors_cross_a_ray_actor_both_ways(local_ray):
    import ray

    from splitfed.server.ray_tensors import register_tensor_serializer

    @ray.remote(num_cpus=0)
    class Echo:
        def __init__(self) -> None:
            register_tensor_serializer(ray)

        def twice(self, tensors: dict) -> dict:
            return {name: tensor * 2 for name, tensor in tensors.items()}

    sent = {str(dtype): _sample(dtype) for dtype in DTYPES if dtype != torch.bool}
    got = ray.get(Echo.remote().twice.remote(sent))
    for name, tensor in sent.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor * 2), name
