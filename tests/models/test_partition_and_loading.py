"""Partitions are validated; loading gives clear errors; unsupported families are refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from splitfed.models import (
    ModelNotFoundError,
    Partition,
    PartitionError,
    PrivacyWarning,
    UnsupportedModelError,
    load_model,
    num_layers,
    split_model,
)


def test_partition_validation():
    model, _ = load_model("tiny-llama")
    assert num_layers(model) == 4
    for bad in [(2, 2), (4, 0), (0, 4), (3, 1)]:
        with pytest.raises(PartitionError, match="leaves no block"):
            split_model(model, Partition(*bad))
    with pytest.raises(PartitionError):
        Partition(-1, 1)
    with pytest.raises(PartitionError):
        Partition(1, 1.5)  # type: ignore[arg-type]
    split = split_model(model, Partition(1, 2))
    assert split.head.layer_indices == (0,)
    assert split.trunk.layer_indices == (1,)
    assert split.tail.layer_indices == (2, 3)


@pytest.mark.parametrize(("partition", "words"), [((0, 1), "invert"), ((1, 0), "labels")])
def test_exposing_partitions_warn_loudly(partition, words, caplog):
    model, _ = load_model("tiny-llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split_model(model, Partition(*partition))
    assert any(issubclass(w.category, PrivacyWarning) and words in str(w.message) for w in caught)
    assert words in caplog.text


def test_parts_share_modules_and_use_whole_model_names():
    model, _ = load_model("tiny-llama")
    split = split_model(model, Partition(1, 1))
    assert split.head.get_submodule("model.layers.0") is model.model.layers[0]
    assert split.trunk.get_submodule("model.layers.2") is model.model.layers[2]
    names = {n for n, _ in split.tail.named_parameters()}
    assert "lm_head.weight" in names and "model.norm.weight" in names
    assert not any(n.startswith("model.embed_tokens") for n in names)
    head_names = {n for n, _ in split.head.named_parameters()}
    assert "model.embed_tokens.weight" in head_names and "lm_head.weight" not in head_names


def test_unknown_names_and_paths_list_what_is_accepted(tmp_path):
    for bad in ["no-such-model", str(tmp_path / "missing"), str(tmp_path)]:
        with pytest.raises(ModelNotFoundError, match="Accepted: built-in names"):
            load_model(bad)


def test_local_directory_round_trip(tmp_path):
    model, tokenizer = load_model("tiny-qwen2")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert loaded_tokenizer.padding_side == "left" and loaded_tokenizer.pad_token is not None


def test_unsupported_family_is_refused_with_the_supported_list(tmp_path):
    config = GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, vocab_size=100)
    model = GPTNeoXForCausalLM(config)
    with pytest.raises(UnsupportedModelError, match="llama-style.*gpt2"):
        split_model(model, Partition(1, 0))
    model.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        load_model(tmp_path)
