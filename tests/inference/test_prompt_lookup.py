"""Prompt-lookup speculative decoding: drafts from the context, several tokens per trunk step, and the
same tokens as the whole model's ``generate``; every part's cache drops the rejected drafts."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from splitfed.inference import ChatSession, LocalGeneration, SamplingSettings, SplitGenerator
from splitfed.inference.lookup import batch_draft, lookup_draft
from splitfed.models.kv_cache import cached_tokens, rewind_cache
from splitfed.server.generation import StaleStream
from tests.conftest import TINY
from tests.inference.test_split_generation import PROMPTS, _setup


def test_lookup_draft_follows_the_latest_occurrence_of_the_longest_ngram():
    #          0  1  2  3  4  5  6  7  8  9
    tokens = [5, 6, 7, 1, 2, 9, 6, 7, 3, 4, 9, 6, 7]
    assert lookup_draft(tokens, 2, 3) == [3, 4]           # "9 6 7" last seen at 5..7, then 3 4
    assert lookup_draft(tokens, 10, 3) == [3, 4, 9, 6, 7]  # capped by the end of the context
    assert lookup_draft([1, 2, 3, 9, 2, 3], 3, 3) == [9, 2, 3]    # "2 3" recurs, "9 2 3" does not
    assert lookup_draft([1, 2, 3, 4], 3, 3) == []           # nothing recurs
    assert lookup_draft([1, 2, 1], 0, 3) == []
    assert lookup_draft([4], 3, 3) == []
    assert lookup_draft([1, 2, 3, 9, 5, 3], 2, 3) == [9, 5]  # a 1-gram match drafts by default...
    assert lookup_draft([1, 2, 3, 9, 5, 3], 2, 3, min_ngram=2) == []  # ...not when 2 are required


def test_a_batch_draft_is_as_long_as_the_shortest_unfinished_rows_draft():
    sequences = torch.tensor([[1, 2, 3, 1, 2], [7, 8, 9, 7, 8]])
    both = batch_draft(sequences, torch.tensor([True, True]), 4, 2, pad_token_id=0)
    assert both.tolist() == [[3, 1, 2], [9, 7, 8]]
    no_match = torch.tensor([[1, 2, 3, 1, 2], [1, 2, 3, 4, 5]])
    assert batch_draft(no_match, torch.tensor([True, True]), 4, 2, 0).shape == (2, 0)
    finished = batch_draft(no_match, torch.tensor([True, False]), 4, 2, pad_token_id=0)
    assert finished.tolist() == [[3, 1, 2], [0, 0, 0]]


def _lookup_generate(split, caches, encoded, sampling: SamplingSettings, owner: str = "c", eos=None):
    generator = SplitGenerator(split.head, split.tail, LocalGeneration(caches, owner))
    tokens = list(generator.generate(encoded.input_ids, encoded.attention_mask, sampling, eos_token_id=eos,
                                     pad_token_id=0))
    return torch.cat([encoded.input_ids, torch.stack(tokens, dim=1)], dim=1), generator


@pytest.mark.parametrize("name", TINY)
def test_greedy_with_lookup_equals_generate_in_fewer_trunk_steps(name):
    model, tokenizer, split, caches = _setup(name)
    calls: list[int] = []
    handle = split.trunk.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[1]))
    try:
        for prompts in (PROMPTS[:1], PROMPTS):
            encoded = tokenizer(prompts, return_tensors="pt", padding=True)
            expected = model.generate(**encoded, max_new_tokens=40, do_sample=False, eos_token_id=None,
                                      pad_token_id=0)
            calls.clear()
            produced, generator = _lookup_generate(split, caches, encoded,
                                                   SamplingSettings(max_new_tokens=40, lookup_tokens=6))
            assert torch.equal(produced, expected)
            counts = generator.lookup
            assert counts.accepted > 0 and len(calls) == 1 + counts.steps < 40  # prefill + steps
            assert counts.drafted >= counts.accepted
            assert generator.past_length == produced.shape[1] - 1  # the last token is not fed
            # the server's cache holds what the client fed, or more (dropped at the next step)
            stream = caches._streams[("c", 0)]
            assert stream.tokens >= generator.past_length
    finally:
        handle.remove()


def test_lookup_with_repetition_penalty_and_eos_equals_generate():
    torch.manual_seed(5)  # a tiny model whose continuation changes token mid-way
    model, tokenizer, split, caches = _setup()
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    start = encoded.input_ids.shape[1]
    plain = model.generate(**encoded, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    continuation = plain[1, start:].tolist()
    new = [token for index, token in enumerate(continuation)
           if 4 <= index <= 24 and token not in continuation[:index]]
    assert new, "the tiny model repeats one token forever: pick another seed"
    eos = [int(plain[0, start]), new[0]]  # row 0 ends at once, row 1 after drafts were accepted
    for penalty in (1.0, 1.3):
        expected = model.generate(**encoded, max_new_tokens=30, do_sample=False, repetition_penalty=penalty,
                                  eos_token_id=eos, pad_token_id=0)
        sampling = SamplingSettings(max_new_tokens=30, repetition_penalty=penalty, lookup_tokens=5)
        produced, generator = _lookup_generate(split, caches, encoded, sampling, eos=eos)
        assert torch.equal(produced, expected)
        if penalty == 1.0:
            assert expected.shape[1] < start + 30 and generator.lookup.accepted > 0


def test_stopping_early_leaves_the_last_token_unfed_and_the_next_turn_exact():
    torch.manual_seed(2)  # a tiny model whose replies re-tokenize as generated, so turns reuse caches
    _, tokenizer, split, caches = _setup()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    replies = {}
    for lookup in (0, 4):
        generator = SplitGenerator(split.head, split.tail, LocalGeneration(caches, f"chat{lookup}"))
        chat = ChatSession(generator, tokenizer, SamplingSettings(max_new_tokens=24, lookup_tokens=lookup))
        replies[lookup] = ["".join(chat.say("hi there")), "".join(chat.say("hi there again"))]
        assert chat.reused_tokens > 0  # the second turn extended the caches the first one left
    assert replies[4] == replies[0]
    encoded = tokenizer(PROMPTS[:1], return_tensors="pt")
    generator = SplitGenerator(split.head, split.tail, LocalGeneration(caches, "early"))
    stream = generator.generate(encoded.input_ids, None, SamplingSettings(max_new_tokens=40, lookup_tokens=6),
                                pad_token_id=0)
    taken = [next(stream) for _ in range(9)]
    stream.close()  # the caller stops, maybe mid-draft
    assert generator.lookup.accepted > 0
    assert len(taken) == 9 and generator.past_length == encoded.input_ids.shape[1] + 8
    assert cached_tokens(generator._head_cache, split.head) == generator.past_length


def test_the_server_drops_rejected_positions_and_refuses_claims_beyond_its_cache():
    _, tokenizer, split, caches = _setup()
    hidden = torch.randn(1, 6, 64)
    caches.step("c", 0, hidden, torch.ones(1, 6, dtype=torch.long), 0)
    assert caches._streams[("c", 0)].tokens == 6
    output, held = caches.step("c", 0, hidden[:, :1], torch.ones(1, 5, dtype=torch.long), 4)  # drop 2
    assert held == 5 and cached_tokens(caches._streams[("c", 0)].cache, split.trunk) == 5
    # the same positions from scratch give the same output: the dropped ones are really gone
    reference, _ = caches.step("c", 1, torch.cat([hidden[:, :4], hidden[:, :1]], dim=1),
                               torch.ones(1, 5, dtype=torch.long), 0)
    torch.testing.assert_close(output, reference[:, -1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(StaleStream, match="holds 5 positions"):
        caches.step("c", 0, hidden[:, :1], torch.ones(1, 8, dtype=torch.long), 7)
    with pytest.raises(ValueError, match="cannot rewind to 9"):
        rewind_cache(caches._streams[("c", 1)].cache, split.trunk, 9)


def test_lookup_is_refused_with_sampling_and_bounded():
    with pytest.raises(ValidationError, match="lookup_tokens needs greedy"):
        SamplingSettings(lookup_tokens=4, temperature=0.7)
    with pytest.raises(ValidationError, match="lookup_tokens"):
        SamplingSettings(lookup_tokens=-1)
    with pytest.raises(ValidationError, match=r"lookup_min_ngram \(4\) exceeds sampling.lookup_ngram \(3\)"):
        SamplingSettings(lookup_tokens=4, lookup_min_ngram=4)
    assert SamplingSettings(lookup_tokens=4, repetition_penalty=1.2).lookup_tokens == 4
