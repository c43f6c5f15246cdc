"""Bad model files are refused before training starts, naming the file and what is wrong, and nothing
half-loaded is kept."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from splitfed.models import Partition, PartitionError, load_model
from splitfed.models import part_loading as part_loading_module
from splitfed.models.gguf_convert import cached_conversion
from splitfed.models.party import CLIENT_ROLES, SERVER_ROLES, load_parts
from splitfed.models.weight_files import INDEX_FILE, ModelFileError

PARTITION = Partition(1, 1)


def _save(directory, shard="40KB"):
    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(directory, max_shard_size=shard)
    tokenizer.save_pretrained(directory)
    return directory


def _index(directory) -> dict[str, str]:
    return json.loads((directory / INDEX_FILE).read_text())["weight_map"]


def test_a_missing_shard_the_part_needs_is_named(tmp_path):
    directory = _save(tmp_path / "model")
    shard = _index(directory)["model.embed_tokens.weight"]
    (directory / shard).unlink()
    missing = rf"in no weight file.*names shard\(s\) that do not exist: {shard}"
    with pytest.raises(ModelFileError, match=missing):
        load_parts(directory, PARTITION, CLIENT_ROLES)


def test_a_missing_shard_of_another_party_does_not_stop_this_one(tmp_path):
    directory = _save(tmp_path / "model")
    index = _index(directory)
    trunk_only = {file for name, file in index.items() if ".layers.1." in name or ".layers.2." in name}
    client_files = {file for name, file in index.items() if file not in trunk_only}
    for file in trunk_only - client_files:
        (directory / file).unlink()
    assert trunk_only - client_files, "the test needs a shard that holds trunk tensors only"
    loaded = load_parts(directory, PARTITION, CLIENT_ROLES)
    assert loaded.split.head is not None and loaded.split.tail is not None
    with pytest.raises(ModelFileError, match="do not exist"):
        load_parts(directory, PARTITION, SERVER_ROLES)


def test_a_truncated_file_is_named(tmp_path):
    directory = _save(tmp_path / "model", shard="10GB")
    (path,) = directory.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=rf"{path}: truncated or corrupted"):
        load_parts(directory, PARTITION, SERVER_ROLES)


def test_a_corrupted_header_is_named(tmp_path):
    directory = _save(tmp_path / "model", shard="10GB")
    (path,) = directory.glob("*.safetensors")
    data = bytearray(path.read_bytes())
    data[10:20] = b"garbage!!!"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=rf"{path}: truncated or corrupted"):
        load_parts(directory, PARTITION, CLIENT_ROLES)


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tmp_path):
    directory = _save(tmp_path / "model", shard="10GB")
    (path,) = directory.glob("*.safetensors")
    tensors = load_file(path)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(64, 64)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match=r"model.layers.1.mlp.up_proj.weight has shape \(64, 64\).*"
                                             r"config.json says \(128, 64\)"):
        load_parts(directory, PARTITION, SERVER_ROLES)
    load_parts(directory, PARTITION, CLIENT_ROLES)  # the client does not read block 1


def test_a_partition_beyond_the_layers_is_refused_before_any_weight_is_read(tmp_path, monkeypatch):
    directory = _save(tmp_path / "model")

    def no_reading(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr("splitfed.models.party.load_part_model", no_reading)
    with pytest.raises(PartitionError, match="the model has 4 blocks"):
        load_parts(directory, Partition(3, 2), CLIENT_ROLES)


def test_nothing_half_loaded_is_kept(tmp_path, monkeypatch):
    directory = _save(tmp_path / "model")
    shard = _index(directory)["lm_head.weight"]
    (directory / shard).unlink()
    built = []
    original = part_loading_module.skeleton

    def recording(config, dtype):
        model = original(config, dtype)
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(part_loading_module, "skeleton", recording)
    with pytest.raises(ModelFileError):
        load_parts(directory, PARTITION, CLIENT_ROLES)
    gc.collect()
    assert built and all(reference() is None for reference in built)


def _gguf(path, quantised):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((1, 292), np.uint8), raw_dtype=quantised)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_with_an_unsupported_quantisation_is_refused_naming_tensor_and_type(tmp_path):
    from gguf import GGMLQuantizationType

    path = _gguf(tmp_path / "model.gguf", GGMLQuantizationType.Q8_K)
    with pytest.raises(ModelFileError, match=rf"{path}: tensor blk.0.attn_q.weight is quantised as Q8_K"):
        cached_conversion(path, torch.float32, tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*.safetensors"))


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelFileError, match=rf"{path}: not a readable GGUF file"):
        load_parts(path, PARTITION, CLIENT_ROLES)
