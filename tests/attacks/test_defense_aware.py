"""Defense-aware attacks: private positions, averaging, the adaptive attacker's simulation, the
known-plaintext fine-tune, and the whole suite on a victim's own traffic (tiny models)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from splitfed.attacks import (
    AttackHarness,
    AttackSettings,
    TrafficAttacks,
    load_victim_rows,
    simulated_defense,
    strongest,
    training_send,
    victim_traffic,
)
from splitfed.attacks.adaptive import averaged, fine_tune
from splitfed.attacks.inverter import Inverter
from splitfed.cli import app
from splitfed.models import LoraSpec, Partition, add_adapter, load_model, split_model
from splitfed.privacy import BottleneckSettings, PrivacySettings, SplitDefense
from splitfed.tasks import load_task
from splitfed.training.replicate import replicate

FAST = {"public_tokens": 2048, "victims": 6, "max_length": 96, "head": 1, "tail": 1, "model": "tiny-llama",
        "inverter": {"steps": 60, "hidden": 128, "negatives": 128}}


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


def test_private_positions_are_the_rows_own_text(llama):
    _, tokenizer = llama
    rows = load_victim_rows(AttackSettings(**FAST, task="cb"), tokenizer)
    examples = load_task("cb", "val", limit=FAST["victims"])
    private, mask, prompt = rows["private"].bool(), rows["attention_mask"].bool(), rows["prompt"].bool()
    assert (private <= prompt).all() and (prompt <= mask).all()
    for row, example in enumerate(examples):
        text = tokenizer.decode(rows["input_ids"][row][private[row]].tolist())
        template = tokenizer.decode(rows["input_ids"][row][mask[row] & ~private[row]].tolist())
        spans = example.private_spans
        assert len(spans) == 2  # premise, hypothesis
        own = "".join(example.prompt[a:b] for a, b in spans)
        assert text.replace(" ", "") in own.replace(" ", "") or own.replace(" ", "") in text.replace(" ", "")
        assert example.answer.strip() in template  # the answer counts as template, not private text


def test_averaging_k_transmissions_divides_the_noise_variance_by_k():
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(4000, 8)

    def send(v):
        return v + torch.randn(v.shape, generator=generator)

    assert float(send(x).var()) == pytest.approx(1.0, rel=0.1)
    assert float(averaged(send, 4)(x).var()) == pytest.approx(0.25, rel=0.1)
    with pytest.raises(ValueError):
        averaged(send, 0)


def test_the_attackers_simulation_runs_the_victims_defense_code_with_its_own_seed(llama):
    model, _ = llama
    public = split_model(replicate(model), Partition(1, 1))
    privacy = PrivacySettings(learned=BottleneckSettings(warmup_steps=2, warmup_batch_size=2), seed=1)
    ids = torch.randint(3, 200, (8, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    attacker = simulated_defense(privacy, public, ids, mask, hidden_size=64, seed=99)
    assert attacker.cut is not None and attacker.settings.seed == 99
    victim = SplitDefense(privacy, hidden_size=64)
    assert attacker.cut.kind == victim.cut.kind
    h = torch.randn(3, 5, 64)
    first, second = training_send(attacker, h), training_send(attacker, h)
    assert first.shape == h.shape and not torch.equal(first, second)  # fresh sample per transmission


def test_known_plaintext_fine_tuning_learns_the_known_pairs():
    embeddings = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    inverter = Inverter(16, embeddings, hidden=32)
    secret = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))[0]
    targets = torch.arange(50).repeat(4)
    features = embeddings[targets] @ secret  # what a secret transform of the tokens looks like
    before = float((inverter.predict(features) == targets).float().mean())
    fine_tune(inverter, features, targets, steps=300, lr=1e-2)
    after = float((inverter.predict(features) == targets).float().mean())
    assert after > max(0.9, before)


def test_the_suite_scores_private_positions_and_names_the_strongest(llama):
    model, tokenizer = llama
    settings = AttackSettings(**FAST, task="cb")
    harness = AttackHarness(model, tokenizer, Partition(1, 1), settings)
    rows = load_victim_rows(settings, tokenizer)
    victim = split_model(replicate(model), Partition(1, 1))
    for part in victim.parts.values():
        add_adapter(part, LoraSpec(r=4))
    undefended = TrafficAttacks(harness, PrivacySettings())
    plain = undefended.run(victim_traffic(victim.head, None, rows, 2), victim.trunk, rows)
    assert plain["attacks"]["nn-cosine"]["token_accuracy"] >= 0.95  # head=1 of a tiny random model
    assert plain["attacks"]["nn-cosine"]["tokens"] == int(rows["private"].sum())
    privacy = PrivacySettings(learned=BottleneckSettings(kl_weight=0.1, initial_scale=3.0, warmup_steps=2,
                                                         warmup_batch_size=2), seed=4)
    defense = SplitDefense(privacy, hidden_size=64)
    defended = TrafficAttacks(harness, privacy, seed=77)
    result = defended.run(victim_traffic(victim.head, defense, rows, 3), victim.trunk, rows)
    names = set(result["attacks"])
    assert {"nn-cosine", "learned", "direct", "adaptive", "known-plaintext", "averaging-3",
            "generation", "optimisation"} <= names
    assert result["attacks"]["generation"]["tokens"] == int((rows["private"] * rows["prompt"]).sum())
    assert result["strongest"] == strongest(result["attacks"])
    best = max(m["rouge_l"] for m in result["attacks"].values())
    assert result["strongest"]["rouge_l"] == best
    # heavy sampling noise at the cut: nearest neighbour no longer reads the text
    assert result["attacks"]["nn-cosine"]["token_accuracy"] < plain["attacks"]["nn-cosine"]["token_accuracy"]


def test_the_attack_command_runs_the_defense_aware_attacks(tmp_path):
    out = tmp_path / "attack"
    result = CliRunner().invoke(app, [
        "attack", "--model", "tiny-llama", "--head", "1", "--tail", "1", "--victims", "4",
        "--attacks", "nn-cosine,adaptive,known-plaintext,averaging,generation", "--inverter-steps", "20",
        "--set", "public_tokens=1024", "--set", "privacy.learned.kind=bottleneck",
        "--set", "privacy.learned.warmup_steps=2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "attack.json").read_text())
    private = saved["private_positions"]["attacks"]
    assert {"adaptive", "known-plaintext", "averaging-4", "generation"} <= set(private)
    assert "(private positions)" in (out / "attack.md").read_text()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-qwen2"])
def test_the_search_attack_recovers_a_row_from_a_weak_guess(name):
    from splitfed.attacks.adaptive import noise_free_wire, search_refine

    model, _ = load_model(name)
    head = split_model(replicate(model), Partition(1, 1)).head
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 259, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    received = head(ids, mask).detach()
    wrong = torch.randint(3, 259, (2, 12, 3), generator=generator)
    candidates = torch.cat([wrong, ids[..., None]], dim=-1)  # the truth is among 4 candidates
    guess = wrong[..., 0]
    refined = search_refine(head, noise_free_wire(None), received, guess, mask, candidates)
    assert torch.equal(refined[mask.bool()], ids[mask.bool()])
    assert not torch.equal(guess[mask.bool()], ids[mask.bool()])
