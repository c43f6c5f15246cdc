"""Batched greedy answers come back in the examples' order, shortest prompts first."""

from __future__ import annotations

import torch

from splitfed.tasks import GenerationExample, evaluate_generation, generate_answers


def test_generate_answers_keeps_example_order(word_tokenizer) -> None:
    tokenizer = word_tokenizer(["a b c d e f Answer : one two three"])
    examples = [GenerationExample("a b c d e f", "x"), GenerationExample("a", "x")]
    seen = []

    def fake(input_ids, attention_mask, max_new_tokens):  # "one" for short prompts, "three" for long
        seen.append(input_ids.shape)
        return torch.tensor([[tokenizer.convert_tokens_to_ids("one" if int(m.sum()) < 6 else "three")]
                             for m in attention_mask])

    assert generate_answers(fake, tokenizer, examples, batch_size=1) == ["three", "one"]
    assert [s[1] for s in seen] == [4, 9]  # shortest prompt first: "<s> a Answer :" then 9 tokens


def test_evaluate_generation_scores_against_references(word_tokenizer) -> None:
    tokenizer = word_tokenizer(["q Answer : white kitten"])
    examples = [GenerationExample("q", "white kitten", references=("white kitten", "white"))]
    white = tokenizer.convert_tokens_to_ids("white")

    def fake(input_ids, attention_mask, max_new_tokens):
        return torch.tensor([[white, tokenizer.eos_token_id, white]])  # text after EOS is dropped

    scores = evaluate_generation(fake, tokenizer, examples, "squad_f1")
    assert scores["f1"] == 1.0 and scores["exact_match"] == 1.0 and scores["n"] == 1
    assert scores["samples"] == [{"prediction": "white", "reference": "white kitten"}]
