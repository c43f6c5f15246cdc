"""Part-only loading: each party builds and reads only its own modules, and computes exactly what the
whole-then-cut path computes; nothing of another party's part exists in its process."""

from __future__ import annotations

import pytest
import torch

from splitfed.models import Partition, load_model, split_model
from splitfed.models.party import CLIENT_ROLES, SERVER_ROLES, TWO_PART_SERVER_ROLES, load_parts
from splitfed.models.tiny import TINY_MODELS
from tests.conftest import make_batch

PARTITION = Partition(1, 1)


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def saved(request, tmp_path_factory):
    """A tiny model saved as sharded safetensors (several shards: the index is exercised)."""
    model, tokenizer = load_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory, max_shard_size="40KB")
    tokenizer.save_pretrained(directory)
    return request.param, directory


def _tensors_in_files(directory) -> int:
    from safetensors import safe_open

    return sum(len(safe_open(file, "pt").keys()) for file in directory.glob("*.safetensors"))


def _reference(directory, dtype=torch.float32):
    model, _ = load_model(directory, dtype=dtype)
    return split_model(model, PARTITION)


def _run(head, trunk, tail, batch):
    mask = batch["attention_mask"]
    return tail(trunk(head(batch["input_ids"], mask), mask), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parts_loaded_apart_equal_the_whole_model_cut(saved, dtype):
    _, directory = saved
    reference = _reference(directory, dtype)
    client = load_parts(directory, PARTITION, CLIENT_ROLES, dtype)
    server = load_parts(directory, PARTITION, SERVER_ROLES, dtype)
    batch = make_batch()
    expected = _run(reference.head, reference.trunk, reference.tail, batch)
    got = _run(client.split.head, server.split.trunk, client.split.tail, batch)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)
    for part, whole in ((client.split.head, reference.head), (client.split.tail, reference.tail),
                        (server.split.trunk, reference.trunk)):
        reference_tensors = dict(whole.named_parameters())
        for name, parameter in part.named_parameters():
            assert parameter.dtype == reference_tensors[name].dtype, name
            assert torch.equal(parameter, reference_tensors[name]), name


def test_a_client_holds_no_trunk_tensor_and_reads_none(saved):
    name, directory = saved
    loaded = load_parts(directory, PARTITION, CLIENT_ROLES)
    trunk_blocks = range(1, loaded.num_layers - 1)
    everything = [n for module in (loaded.split.head, loaded.split.tail)
                  for n, _ in [*module.named_parameters(), *module.named_buffers()]]
    assert loaded.split.trunk is None
    for block in trunk_blocks:
        assert not any(f".{block}." in n for n in everything), (name, block)
    # the process's whole model object holds nothing of the trunk either
    root = loaded.model.get_submodule(loaded.split.family.layers_path)
    for block in trunk_blocks:
        assert not list(root[block].parameters()) and not list(root[block].buffers())
    held = {id(p) for part in (loaded.split.head, loaded.split.tail) for p in part.parameters()}
    assert {id(p) for p in loaded.model.parameters()} == held
    assert 0 < loaded.report.tensors_read < _tensors_in_files(directory)
    # what was read is what the part holds: a tied LM head is read once, no other block is read
    assert 0 < loaded.report.bytes_read <= loaded.report.part_bytes
    assert loaded.report.bytes_read >= sum(p.numel() * 4 for p in loaded.model.parameters())
    with pytest.raises(RuntimeError, match="not loaded in this process"):
        root[1](torch.zeros(1, 2, 64))


def test_the_server_reads_only_the_trunk(saved):
    _, directory = saved
    loaded = load_parts(directory, PARTITION, SERVER_ROLES)
    assert loaded.split.head is None and loaded.split.tail is None
    names = {n for n, _ in loaded.split.trunk.named_parameters()}
    assert not any("embed" in n or "lm_head" in n or "wte" in n for n in names)
    assert 0 < loaded.report.tensors_read < _tensors_in_files(directory)
    assert loaded.report.bytes_read == sum(p.numel() * 4 for p in loaded.model.parameters())


def test_a_two_part_server_holds_trunk_and_lm_head_and_matches(saved):
    _, directory = saved
    partition = Partition(1, 0)
    model, _ = load_model(directory)
    reference = split_model(model, partition)
    client = load_parts(directory, partition, ("head",))
    server = load_parts(directory, partition, TWO_PART_SERVER_ROLES)
    batch = make_batch()
    assert torch.equal(_run(client.split.head, server.split.trunk, server.split.tail, batch),
                       _run(reference.head, reference.trunk, reference.tail, batch))
    assert client.split.tail is None and server.split.head is None


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_built_in_tiny_models_are_cut_down_to_the_part(name):
    model, _ = load_model(name)
    reference = split_model(model, PARTITION)
    client = load_parts(name, PARTITION, CLIENT_ROLES)
    server = load_parts(name, PARTITION, SERVER_ROLES)
    batch = make_batch()
    assert torch.equal(_run(client.split.head, server.split.trunk, client.split.tail, batch),
                       _run(reference.head, reference.trunk, reference.tail, batch))
    held = {n for part in (client.split.head, client.split.tail) for n, _ in part.named_parameters()}
    assert not any(".1." in n or ".2." in n for n in held if "layers" in n or ".h." in n)
