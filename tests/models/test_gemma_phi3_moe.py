"""Gemma 2, Gemma 3 (text), Phi-3 and the MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE) split exactly.

Their tiny configs (splitfed/models/tiny.py) carry what makes each family differ from Llama, at values
that matter for 14-token batches: sliding windows of 4-6 tokens, soft caps that bite, local and global
rope bases, fused projections, partial rotary embeddings, shared experts and dense layers among MoE
ones. The ``*_is_active`` tests below prove those features change the output, so the exactness tests
would see them go wrong.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

from splitfed.models import (
    LoraSpec,
    Partition,
    PrefixSpec,
    UnsupportedModelError,
    adapter_state,
    add_adapter,
    export_merged,
    generate_greedy,
    load_adapter,
    load_model,
    positions_from_mask,
    split_model,
)
from splitfed.models.adapters import DEFAULT_LORA_TARGETS
from splitfed.models.families import family_for, family_of_config
from splitfed.training.loss import causal_lm_loss
from tests.conftest import make_batch
from tests.models.test_adapters_and_export import _save_parts, _trained_federation
from tests.models.test_generation import PROMPTS, _lora_everywhere
from tests.models.test_split_equivalence import SPECS, TOL, _max_diff, _pair, _split_grads

NEW = ["tiny-gemma2", "tiny-gemma3", "tiny-phi3", "tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe"]
MOE = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe"]
PARTITIONS = [Partition(1, 1), Partition(2, 1), Partition(1, 2), Partition(0, 1)]
EXPECTED_FAMILY = {"tiny-gemma2": "gemma2", "tiny-gemma3": "gemma3", "tiny-phi3": "phi3",
                   "tiny-mixtral": "moe", "tiny-qwen2-moe": "moe", "tiny-qwen3-moe": "moe"}


def _whole_logits(model, batch) -> torch.Tensor:
    positions = positions_from_mask(batch["attention_mask"], batch["input_ids"].shape[1], 0, "cpu")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=positions).logits


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("spec", SPECS, ids=["lora", "prefix"])
@pytest.mark.parametrize("left_pad", [False, True], ids=["no-pad", "left-pad"])
def test_logits_loss_and_gradients_match_whole_model(name, spec, left_pad):
    batch = make_batch(left_pad=left_pad)
    for partition in PARTITIONS:
        split, whole = _pair(name, partition, spec)
        assert split.family.name == EXPECTED_FAMILY[name]
        whole_logits = whole(batch["input_ids"], batch["attention_mask"])
        whole_loss = causal_lm_loss(whole_logits, batch["labels"])
        whole_loss.backward()
        split_logits = split(batch["input_ids"], batch["attention_mask"])
        split_loss = causal_lm_loss(split_logits, batch["labels"])
        split_loss.backward()

        assert _max_diff(split_logits, whole_logits, batch["attention_mask"]) <= TOL, partition
        assert abs(split_loss.item() - whole_loss.item()) <= TOL
        whole_grads = {n: p.grad for n, p in whole.named_parameters() if p.requires_grad}
        split_grads = _split_grads(split)
        assert set(split_grads) == set(whole_grads) and whole_grads
        for key, grad in whole_grads.items():
            assert grad is not None and grad.abs().sum() > 0, key
            assert _max_diff(split_grads[key], grad) <= TOL, (partition, key)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("partition", [Partition(1, 1), Partition(2, 1), Partition(1, 2)], ids=str)
def test_greedy_with_per_part_caches_matches_hf_generate(name, partition):
    model, tokenizer = load_model(name)
    split = split_model(model, partition)
    _lora_everywhere(split)
    for prompts in (PROMPTS[:1], PROMPTS):
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        expected = model.generate(**encoded, max_new_tokens=16, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=None)
        produced = generate_greedy(split, encoded.input_ids, encoded.attention_mask, 16)
        assert torch.equal(produced, expected.sequences)
        # Tokens alone hide small errors (a soft cap never changes the argmax): the logits of every
        # step, from the per-part caches, match too.
        new_tokens = expected.sequences[:, encoded.input_ids.shape[1]:]
        steps = _cached_step_logits(split, encoded.input_ids, encoded.attention_mask, new_tokens)
        assert (steps - torch.stack(expected.logits, dim=1)).abs().max() <= 1e-5


@torch.no_grad()
def _cached_step_logits(split, input_ids, attention_mask, new_tokens) -> torch.Tensor:
    """Last-position logits of the prefill and of each decode step fed ``new_tokens``, with caches."""
    caches = split.new_caches()
    logits = [split(input_ids, attention_mask, caches=caches)[:, -1]]
    for token in new_tokens[:, :-1].T:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], dim=-1)
        logits.append(split(token[:, None], attention_mask, caches=caches)[:, -1])
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("name", NEW)
def test_default_lora_targets_exist_in_every_block_and_inject(name):
    model, _ = load_model(name)
    split = split_model(model, Partition(1, 1))
    family = split.family
    targets = DEFAULT_LORA_TARGETS[family.name]
    for index in range(family.num_layers(model.config)):
        block = model.get_submodule(family.layer_path(index))
        leaves = {path.rsplit(".", 1)[-1] for path, module in block.named_modules()
                  if isinstance(module, torch.nn.Linear)}
        assert set(targets) <= leaves, (index, targets)
    for part in split.parts.values():
        add_adapter(part, LoraSpec(r=2))
        injected = {n.split(".lora_A")[0] for n, _ in part.named_parameters() if ".lora_A." in n}
        assert len(injected) == len(part.layer_indices) * len(targets), part.role
        assert all(".experts" not in n and ".gate." not in n for n in injected)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize(
    "spec", [LoraSpec(r=4, alpha=8), PrefixSpec(num_virtual_tokens=3)], ids=["lora", "prefix"]
)
def test_trained_part_adapters_save_and_load_back(name, spec, tmp_path):
    model, _ = load_model(name)
    initial = [adapter_state(p) for p in split_model(model, Partition(1, 1)).parts.values()]
    federation = _trained_federation(name, spec)
    client = federation.clients[0]
    trained = [adapter_state(p) for p in (client.head, federation.server.trunk, client.tail)]
    for before, after in zip(initial, trained, strict=True):
        for key, value in after.items():
            if key in before:
                assert not torch.equal(before[key], value), key  # every adapter tensor trained
    directories = _save_parts(federation, tmp_path)
    fresh = split_model(load_model(name)[0], Partition(1, 1))
    for part, directory in zip(fresh.parts.values(), directories, strict=True):
        load_adapter(part, directory)
    batch = make_batch(seed=5)
    with torch.no_grad():
        expected = federation.logits(batch["input_ids"], batch["attention_mask"])
        got = fresh(batch["input_ids"], batch["attention_mask"])
    assert (got - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-phi3", "tiny-qwen2-moe"])
def test_lora_merged_export_loads_with_plain_transformers(name, tmp_path):
    from transformers import AutoModelForCausalLM

    federation = _trained_federation(name, LoraSpec(r=4, alpha=8))
    out = export_merged(name, _save_parts(federation, tmp_path), tmp_path / "merged")
    batch = make_batch(left_pad=True, seed=11)
    merged = _whole_logits(AutoModelForCausalLM.from_pretrained(out), batch)
    with torch.no_grad():
        expected = federation.logits(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (merged[real] - expected[real]).abs().max().item() <= 1e-4


# -- the family features are active in the tiny configs ---------------------------------------------
def _changes_logits(name: str, mutate) -> float:
    model, _ = load_model(name)
    batch = make_batch(left_pad=True)
    before = _whole_logits(model, batch)
    mutate(model)
    real = batch["attention_mask"].bool()
    return (_whole_logits(model, batch)[real] - before[real]).abs().max().item()


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_final_logit_softcap_is_active(name):
    assert _changes_logits(name, lambda m: setattr(m.config, "final_logit_softcapping", None)) > 0.1


def test_gemma2_attention_softcap_is_active():
    def uncap(model):
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None

    assert _changes_logits("tiny-gemma2", uncap) > 1e-3


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3", "tiny-phi3"])
def test_sliding_window_is_active(name):
    def full(model):
        if getattr(model.config, "layer_types", None):  # Gemma: one mask per layer type
            model.config.layer_types = ["full_attention"] * model.config.num_hidden_layers
        else:  # Phi-3: one mask for all layers, sliding when the config has a window
            model.config.sliding_window = None

    assert _changes_logits(name, full) > 1e-3


def test_gemma3_local_and_global_rope_differ():
    def global_rope_everywhere(model):
        rotary = model.model.rotary_emb
        rotary.sliding_attention_inv_freq.copy_(rotary.full_attention_inv_freq)

    assert _changes_logits("tiny-gemma3", global_rope_everywhere) > 1e-3


# -- MoE: the auxiliary load-balancing loss ---------------------------------------------------------
@pytest.mark.parametrize("name", MOE)
def test_moe_split_loss_is_hf_loss_without_the_router_aux_loss(name):
    """splitfed trains the LM loss alone: HF's loss with output_router_logits off (the default), and
    HF's loss minus router_aux_loss_coef * aux_loss with it on (see MoeFamily)."""
    model, _ = load_model(name)
    assert model.config.output_router_logits is False
    batch = make_batch(left_pad=True)
    positions = positions_from_mask(batch["attention_mask"], batch["input_ids"].shape[1], 0, "cpu")
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=positions, labels=batch["labels"])
    split = split_model(copy.deepcopy(model), Partition(1, 1))
    with torch.no_grad():
        ours = causal_lm_loss(split(batch["input_ids"], batch["attention_mask"]), batch["labels"]).item()
        default = model(**inputs)
        with_aux = model(**inputs, output_router_logits=True)
    assert default.aux_loss is None and abs(default.loss.item() - ours) <= TOL
    aux = model.config.router_aux_loss_coef * with_aux.aux_loss.item()
    assert aux > 1e-4  # large enough that the comparisons below tell the two losses apart
    assert abs(with_aux.loss.item() - aux - ours) <= TOL
    assert abs(with_aux.loss.item() - ours) > 1e-4


# -- refusals ---------------------------------------------------------------------------------------
def _tiny_multimodal_gemma3() -> Gemma3Config:
    text = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14)
    return Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                        image_token_index=299, boi_token_index=297, eoi_token_index=298)


def test_multimodal_gemma3_is_refused_with_the_reason(tmp_path):
    config = _tiny_multimodal_gemma3()
    model = Gemma3ForConditionalGeneration(config)
    with pytest.raises(UnsupportedModelError, match="multimodal Gemma 3.*vision tower.*gemma3_text"):
        split_model(model, Partition(1, 0))
    config.save_pretrained(tmp_path)  # refused from config.json alone, before any weight is read
    with pytest.raises(UnsupportedModelError, match=f"{tmp_path}.*multimodal Gemma 3"):
        load_model(tmp_path)


def test_bidirectional_gemma3_is_refused():
    config = Gemma3TextConfig(num_hidden_layers=2, use_bidirectional_attention=True)
    with pytest.raises(UnsupportedModelError, match="bidirectional.*causal"):
        family_of_config(config)


def test_every_new_family_is_found_by_model_type():
    for name, family in EXPECTED_FAMILY.items():
        assert family_for(load_model(name)[0]).name == family
