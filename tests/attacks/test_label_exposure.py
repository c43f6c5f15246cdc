"""Label exposure, measured by the attack harness: the two-part layout hands the server every labelled
token; the three-part layout leaves it only the public tail's guesses."""

from __future__ import annotations

import pytest

from splitfed.attacks import AttackHarness, AttackSettings, load_victim_rows
from splitfed.models import Partition, load_model, split_model
from splitfed.training.replicate import replicate

FAST = {"public_tokens": 256, "gradient_public_tokens": 128, "victims": 6, "max_length": 64,
        "attacks": ["labels"], "model": "tiny-llama", "head": 1}


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


def test_two_part_exposes_every_label_three_part_does_not(llama):
    model, tokenizer = llama
    results = {}
    for layout, tail in (("two-part", 0), ("three-part", 1)):
        settings = AttackSettings(layout=layout, tail=tail, **FAST)
        harness = AttackHarness(model, tokenizer, Partition(1, tail), settings)
        rows = load_victim_rows(settings, tokenizer)
        assert int((rows["labels"] != -100).sum()) > 0
        victim = split_model(replicate(model), Partition(1, tail))
        results[layout] = harness.evaluate(victim, rows)["attacks"]["labels"]["token_accuracy"]
    assert results["two-part"] == 1.0
    assert results["three-part"] < 0.2  # a random tiny model's guesses: near chance
    with pytest.raises(ValueError, match="tail: 0"):
        AttackSettings(layout="two-part", tail=1)
