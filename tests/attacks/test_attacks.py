"""The attacks work when there is no defense (else they are wrong), and the defense weakens them."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from splitfed.attacks import (
    AttackHarness,
    AttackSettings,
    ChannelDefense,
    clean_wikitext,
    defend,
    direct_forward,
    head_outputs,
    load_victim_rows,
    nearest_tokens,
    score,
    sigma_sampler,
    trunk_outputs,
)
from splitfed.cli import app
from splitfed.models import Partition, load_model, split_model, token_embedding_matrix
from splitfed.training.replicate import replicate

FAST = {"public_tokens": 2048, "gradient_public_tokens": 1024, "victims": 8, "max_length": 96,
        "inverter": {"steps": 80, "hidden": 256}}


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


def _victim_split(model, head, tail=1):
    return split_model(replicate(model), Partition(head, tail))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_nearest_neighbour_inverts_raw_embeddings_exactly(llama, metric):
    model, tokenizer = llama
    rows = load_victim_rows(AttackSettings(**FAST), tokenizer)
    hidden = head_outputs(_victim_split(model, 0).head, rows["input_ids"], rows["attention_mask"])
    predicted = nearest_tokens(hidden, token_embedding_matrix(model), metric)
    result = score(predicted, rows["input_ids"], rows["attention_mask"], tokenizer)
    assert result.token_accuracy >= 0.99 and result.rouge_l >= 0.99


def test_noise_defeats_nearest_neighbour_at_head_zero(llama):
    model, tokenizer = llama
    rows = load_victim_rows(AttackSettings(**FAST), tokenizer)
    mask = rows["attention_mask"]
    hidden = head_outputs(_victim_split(model, 0).head, rows["input_ids"], mask)
    clip = float(hidden.norm(dim=-1)[mask.bool()].median())
    embeddings = token_embedding_matrix(model)
    accuracies = []
    for sigma in (0.0, 0.2, 5.0):
        sent = defend(hidden, clip, sigma, torch.Generator().manual_seed(0))
        accuracies.append(score(nearest_tokens(sent, embeddings), rows["input_ids"], mask,
                                tokenizer).token_accuracy)
    assert accuracies[0] >= 0.99 > accuracies[1] > accuracies[2]
    assert accuracies[2] < 0.1  # near chance (1/259 per token, and spaces are frequent)


def test_learned_inverter_recovers_most_tokens_at_head_one_and_less_under_noise(llama):
    model, tokenizer = llama
    harness_settings = AttackSettings(model="tiny-llama", head=1, tail=1,
                                      attacks=["learned"], **FAST)
    harness = AttackHarness(model, tokenizer, Partition(1, 1), harness_settings)
    rows = load_victim_rows(harness_settings, tokenizer)
    clean = harness.evaluate(_victim_split(model, 1), rows)["attacks"]
    assert clean["learned"]["token_accuracy"] > 0.9
    noisy_settings = harness_settings.model_copy(update={"forward": ChannelDefense(clip="median", sigma=0.5)})
    harness.settings = noisy_settings
    noisy = harness.evaluate(_victim_split(model, 1), rows)["attacks"]
    assert noisy["learned"]["token_accuracy"] < clean["learned"]["token_accuracy"]
    assert noisy["learned"]["clip"] == pytest.approx(harness.forward_median)


def test_mixed_level_noise_draws_a_sigma_per_vector():
    noise = sigma_sampler(1.0, [0.0, 10.0])
    out = noise(torch.randn(4000, 16) * 5, torch.Generator().manual_seed(0))
    quiet = out.norm(dim=-1) <= 1.0 + 1e-6  # sigma 0: clipped only
    assert 0.4 < float(quiet.float().mean()) < 0.6
    assert float(out[~quiet].std()) == pytest.approx(10.0, rel=0.05)


def test_metrics_exclude_padding_and_count_exact_rows():
    class Chars:
        def decode(self, ids):
            return " ".join(f"w{i}" for i in ids)

    target = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    predicted = torch.tensor([[9, 9, 5, 6, 7], [1, 2, 3, 4, 8]])
    result = score(predicted, target, mask, Chars())
    assert result.token_accuracy == pytest.approx(7 / 8)
    assert result.exact_sequence == pytest.approx(0.5)
    assert result.rouge_l == pytest.approx((1.0 + 0.8) / 2)
    assert result.tokens == 8 and result.sequences == 2


def test_direct_forward_is_the_public_models_next_token_guess(llama):
    model, tokenizer = llama
    rows = load_victim_rows(AttackSettings(**FAST), tokenizer)
    ids, mask = rows["input_ids"], rows["attention_mask"]
    split = _victim_split(model, 1)
    trunk_out = trunk_outputs(split.trunk, head_outputs(split.head, ids, mask), mask)
    predicted, target, keep = direct_forward(split.tail, trunk_out, mask, ids)
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)[:, :-1]
    assert torch.equal(predicted[keep], whole[keep])
    assert torch.equal(target, ids[:, 1:]) and keep.shape == (ids.shape[0], ids.shape[1] - 1)
    assert int(keep.sum()) == int(mask.sum()) - ids.shape[0]


def test_wikitext_cleaning_drops_headings_and_crlf():
    assert clean_wikitext(" = Title = \r\n text one \r\n\r\n = = Sub = = \r\n two\r\n") == "text one\ntwo"


def test_attack_command_writes_results_and_refuses_noise_without_clip(tmp_path):
    runner = CliRunner()
    out = tmp_path / "attack"
    result = runner.invoke(app, ["attack", "--model", "tiny-llama", "--head", "0", "--tail", "1",
                                 "--victims", "4", "--attacks", "nn-cosine,nn-l2,direct",
                                 "--set", "public_tokens=512", "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "attack.json").read_text())
    assert saved["attacks"]["nn-cosine"]["token_accuracy"] >= 0.99
    assert (out / "attack.md").read_text().startswith("| attack |")
    bad = runner.invoke(app, ["attack", "--model", "tiny-llama", "--head", "1", "--tail", "1",
                              "--forward-sigma", "1.0", "--output", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "clip" in bad.output
