"""Split generation with the trunk's caches in a server-side ``GenerationCaches``: the same tokens as
the whole model's ``generate`` (greedy, sampled, penalized), caches that expire, evict and recover."""

from __future__ import annotations

import threading

import pytest
import torch

from splitfed.inference import (
    ChatSession,
    LocalGeneration,
    SamplingSettings,
    SplitGenerator,
    StaleCacheError,
    TextStream,
)
from splitfed.models import LoraSpec, Partition, add_adapter, load_model, split_model
from splitfed.models.kv_cache import prefill_transient_bytes
from splitfed.server.generation import CacheBudgetExceeded, GenerationCaches
from tests.conftest import TINY

PROMPTS = ["hello there", "a much longer prompt, left padded against the short one"]


def _setup(name: str = "tiny-llama", **caches_kwargs):
    model, tokenizer = load_model(name)
    split = split_model(model, Partition(1, 1))
    for part in split.parts.values():
        add_adapter(part, LoraSpec(r=4))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter_name, parameter in split.named_parameters():
            if "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    caches = GenerationCaches(split.trunk, **caches_kwargs)
    return model, tokenizer, split, caches


def _generate(split, caches, encoded, sampling: SamplingSettings, owner: str = "c", stream: int = 0,
              use_cache: bool = True) -> torch.Tensor:
    generator = SplitGenerator(split.head, split.tail, LocalGeneration(caches, owner), stream, use_cache)
    tokens = list(generator.generate(encoded.input_ids, encoded.attention_mask, sampling, eos_token_id=None,
                                     pad_token_id=0))
    return torch.cat([encoded.input_ids, torch.stack(tokens, dim=1)], dim=1)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "recompute"])
def test_greedy_split_generation_equals_generate(name, use_cache):
    model, tokenizer, split, caches = _setup(name)
    for prompts in (PROMPTS[:1], PROMPTS):
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        expected = model.generate(**encoded, max_new_tokens=16, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
        produced = _generate(split, caches, encoded, SamplingSettings(max_new_tokens=16), use_cache=use_cache)
        assert torch.equal(produced, expected)


def test_sampling_and_repetition_penalty_match_generate_with_the_same_processors():
    model, tokenizer, split, caches = _setup()
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    expected = model.generate(**encoded, max_new_tokens=12, do_sample=False, repetition_penalty=1.5,
                              eos_token_id=None, pad_token_id=0)
    produced = _generate(split, caches, encoded, SamplingSettings(max_new_tokens=12, repetition_penalty=1.5))
    assert torch.equal(produced, expected)
    sampling = SamplingSettings(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    first = _generate(split, caches, encoded, sampling)
    assert torch.equal(first, _generate(split, caches, encoded, sampling))  # seeded: reproducible
    assert not torch.equal(first, _generate(split, caches, encoded, sampling.model_copy(update={"seed": 8})))


def test_decode_steps_send_one_token_whatever_the_context():
    _, tokenizer, split, caches = _setup()
    shapes: list[tuple[int, ...]] = []
    handle = split.trunk.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    _generate(split, caches, encoded, SamplingSettings(max_new_tokens=5))
    handle.remove()
    assert shapes[0] == (2, encoded.input_ids.shape[1], 64) and shapes[1:] == [(2, 1, 64)] * 4


def test_concurrent_decodes_are_batched_and_stay_correct():
    model, tokenizer, split, caches = _setup()
    prompts = ["one", "two words", "three words here", "and a fourth, longer prompt"]
    expected = {}
    for prompt in prompts:
        encoded = tokenizer([prompt], return_tensors="pt")
        expected[prompt] = model.generate(**encoded, max_new_tokens=12, do_sample=False, eos_token_id=None,
                                          pad_token_id=0)
    produced: dict[str, torch.Tensor] = {}

    def run(index: int, prompt: str) -> None:
        encoded = tokenizer([prompt], return_tensors="pt")
        produced[prompt] = _generate(split, caches, encoded, SamplingSettings(max_new_tokens=12),
                                     owner=f"client{index}")

    threads = [threading.Thread(target=run, args=item) for item in enumerate(prompts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for prompt in prompts:
        assert torch.equal(produced[prompt], expected[prompt]), prompt
    assert caches.batched_calls > 0 and caches.batched_rows > caches.batched_calls  # really merged
    for index in range(len(prompts)):
        caches.release(f"client{index}")
    assert caches.bytes_in_use == 0 and caches.streams() == []


def test_budget_eviction_expiry_and_recovery():
    _, tokenizer, split, caches = _setup()
    encoded = tokenizer(PROMPTS[:1], return_tensors="pt")
    length = encoded.input_ids.shape[1]
    per_row = caches.per_token * (length + 4)
    working = prefill_transient_bytes(split.trunk, 1, length)  # the prompt's prefill computes in this
    caches.budget_bytes = int(per_row * 1.5) + working  # room for one stream
    first = SplitGenerator(split.head, split.tail, LocalGeneration(caches, "a"))
    reference = list(first.generate(encoded.input_ids, sampling=SamplingSettings(max_new_tokens=4)))
    assert caches.streams() == [("a", 0)]
    other = SplitGenerator(split.head, split.tail, LocalGeneration(caches, "b"))
    list(other.generate(encoded.input_ids, sampling=SamplingSettings(max_new_tokens=4)))
    assert caches.streams() == [("b", 0)]  # a's idle cache was evicted to make room
    # a goes on: its stale cache is detected and the context resent, with the same tokens as before (its
    # prefill, a few tokens longer than the prompt's, needs a little more working memory)
    caches.budget_bytes = int(per_row * 1.5) + prefill_transient_bytes(split.trunk, 1, length + 8)
    more = first.feed(reference[-1][:, None])
    assert first.restarts == 1 and more.shape[0] == 1
    with pytest.raises(StaleCacheError):
        LocalGeneration(caches, "b").generate_step(0, torch.zeros(1, 1, 64), torch.ones(1, 99), 98)
    caches.budget_bytes = caches.per_token  # not even one prompt fits now
    with pytest.raises(CacheBudgetExceeded, match="generation budget"):
        SplitGenerator(split.head, split.tail, LocalGeneration(caches, "c")).feed(encoded.input_ids)
    held = len(caches.streams())
    assert held >= 1 and caches.expire(now=float("inf")) == held
    assert caches.streams() == [] and caches.bytes_in_use == 0


def test_text_stream_holds_back_and_cuts_at_stop_strings():
    _, tokenizer = load_model("tiny-llama")  # byte-level tokenizer: one token per character
    ids = tokenizer("Hello world. STOP here")["input_ids"]
    stream = TextStream(tokenizer, stop=["STOP"])
    pieces = [stream.push(i) for i in ids]
    text = "".join(pieces) + stream.finish()
    assert stream.stopped and text == "Hello world. "
    assert all("S" not in piece for piece in pieces)  # the possible start of "STOP" was held back


def test_chat_session_reuses_the_cache_across_turns():
    _, tokenizer, split, caches = _setup()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    generator = SplitGenerator(split.head, split.tail, LocalGeneration(caches, "chat"))
    chat = ChatSession(generator, tokenizer, SamplingSettings(max_new_tokens=6, stop=["\n"]))
    first = "".join(chat.say("hi"))
    assert chat.reused_tokens == 0 and chat.messages[-1] == {"role": "assistant", "content": first}
    second = "".join(chat.say("and again"))
    assert isinstance(second, str) and len(chat.messages) == 4
    # the second turn either extended the cache or (if the reply re-tokenizes differently) started over;
    # either way the answer equals a fresh generation over the whole conversation
    fresh = SplitGenerator(split.head, split.tail, LocalGeneration(caches, "fresh"))
    replay = ChatSession(fresh, tokenizer, SamplingSettings(max_new_tokens=6, stop=["\n"]))
    replay.messages = chat.messages[:2]
    replay._unfed = []
    assert "".join(replay.say("and again")) == second


def test_generation_sends_clipped_noised_hidden_states_when_the_defense_protects_inference():
    from splitfed.privacy import ChannelSettings, PrivacySettings, SplitDefense

    _, tokenizer, split, caches = _setup()
    received: list[torch.Tensor] = []
    handle = split.trunk.register_forward_pre_hook(lambda _m, args: received.append(args[0].clone()))
    encoded = tokenizer(PROMPTS[:1], return_tensors="pt")
    clean = split.head(encoded.input_ids).detach()
    defense = SplitDefense(PrivacySettings(forward=ChannelSettings(clip=0.5, sigma=0.0), seed=1))
    generator = SplitGenerator(split.head, split.tail, LocalGeneration(caches, "noisy"), defense=defense)
    list(generator.generate(encoded.input_ids, sampling=SamplingSettings(max_new_tokens=3)))
    handle.remove()
    assert received[0].norm(dim=-1).max() <= 0.5 + 1e-5 < clean.norm(dim=-1).max()  # clipped before sending
    assert torch.equal(split.head(encoded.input_ids).detach(), clean)  # the client's own head is untouched


def test_the_client_holding_the_most_cache_loses_its_idle_streams_first():
    _, tokenizer, split, caches = _setup()
    encoded = tokenizer(PROMPTS[:1], return_tensors="pt")
    per_stream = caches.per_token * (encoded.input_ids.shape[1] + 2)
    working = prefill_transient_bytes(split.trunk, 1, encoded.input_ids.shape[1])
    caches.budget_bytes = int(per_stream * 3.5) + working  # room for three streams
    sampling = SamplingSettings(max_new_tokens=2)
    honest = SplitGenerator(split.head, split.tail, LocalGeneration(caches, "alice"))
    list(honest.generate(encoded.input_ids, sampling=sampling))
    for stream in range(2):  # mallory takes the rest of the cache with two streams
        list(SplitGenerator(split.head, split.tail, LocalGeneration(caches, "mallory"), stream)
             .generate(encoded.input_ids, sampling=sampling))
    list(SplitGenerator(split.head, split.tail, LocalGeneration(caches, "mallory"), 2)
         .generate(encoded.input_ids, sampling=sampling))  # a third: room is made from mallory's own
    owners = [owner for owner, _ in caches.streams()]
    assert owners.count("alice") == 1 and owners.count("mallory") == 2
