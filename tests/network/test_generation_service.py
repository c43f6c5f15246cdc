"""Split inference over the network: the trunk's caches live on the server, the prompt, the sampling and
the logits on the client; greedy output equals the whole model's ``generate``."""

from __future__ import annotations

import threading

import pytest
import torch

from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.inference import SamplingSettings, SplitGenerator
from splitfed.models import LoraSpec, Partition, add_adapter, load_model, split_model
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server import LocalTrunk
from splitfed.server.modes import SequentialMode
from splitfed.server.trunk_service import ServiceLimits, TrunkService
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve

NAMES = [f"client{i}" for i in range(8)]


class Lab:
    """tiny-llama with LoRA on every part; its trunk served on 127.0.0.1 to eight enrolled clients."""

    def __init__(self) -> None:
        self.model, self.tokenizer = load_model("tiny-llama")
        self.split = split_model(self.model, Partition(1, 1))
        for part in self.split.parts.values():
            add_adapter(part, LoraSpec(r=4))
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, parameter in self.split.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        self.server_identity = Identity.generate("server")
        self.people = {name: Identity.generate(name) for name in NAMES}
        allow = AllowList([identity.public for identity in self.people.values()])
        limits = ServiceLimits(max_length=1024, generation_budget_bytes=64 << 20)
        handshake = ServerHandshake(self.server_identity, allow)
        self.service = TrunkService(SequentialMode(LocalTrunk(self.split.trunk)), handshake, limits=limits)
        self.server, port = serve(self.service, "127.0.0.1:0", allow_insecure_loopback=True)
        self.address = f"127.0.0.1:{port}"

    @property
    def caches(self):
        return self.service.mode.subs[0].generation

    def remote(self, name: str = "client0") -> RemoteTrunk:
        connection = TrunkConnection(self.address, allow_insecure_loopback=True, timeout_s=60)
        remote = RemoteTrunk(connection, self.people[name], self.server_identity.public)
        remote.connect((1, 3), 64)
        return remote

    def generator(self, remote: RemoteTrunk, use_cache: bool = True) -> SplitGenerator:
        return SplitGenerator(self.split.head, self.split.tail, remote, use_cache=use_cache)

    def expected(self, prompts: list[str], new_tokens: int) -> torch.Tensor:
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True)
        return self.model.generate(**encoded, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)


def _run(generator: SplitGenerator, tokenizer, prompts: list[str], new_tokens: int) -> torch.Tensor:
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    tokens = list(generator.generate(encoded.input_ids, encoded.attention_mask,
                                     SamplingSettings(max_new_tokens=new_tokens), eos_token_id=None,
                                     pad_token_id=0))
    return torch.cat([encoded.input_ids, torch.stack(tokens, dim=1)], dim=1)


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    yield lab
    lab.server.stop(0)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "recompute"])
def test_greedy_over_the_network_equals_generate(lab, use_cache):
    remote = lab.remote()
    try:
        for prompts in (["hello there"], ["hello there", "a longer prompt, left padded against the other"]):
            produced = _run(lab.generator(remote, use_cache), lab.tokenizer, prompts, 16)
            assert torch.equal(produced, lab.expected(prompts, 16))
    finally:
        remote.close()
        remote.connection.close()


def test_prompt_lookup_over_the_network_equals_generate_in_fewer_round_trips(lab):
    prompts = ["hello there", "a longer prompt, left padded against the other"]
    encoded = lab.tokenizer(prompts, return_tensors="pt", padding=True)
    remote = lab.remote()
    try:
        generator = lab.generator(remote)
        before = remote.connection.exchanges
        tokens = list(generator.generate(encoded.input_ids, encoded.attention_mask,
                                         SamplingSettings(max_new_tokens=32, lookup_tokens=6),
                                         eos_token_id=None, pad_token_id=0))
        exchanges = remote.connection.exchanges - before
        produced = torch.cat([encoded.input_ids, torch.stack(tokens, dim=1)], dim=1)
        assert torch.equal(produced, lab.expected(prompts, 32))
        counts = generator.lookup
        assert counts.accepted > 0 and exchanges == 1 + counts.steps < 32  # the prefill, then the steps
        # the next turn claims the positions the client kept; the server drops its extra ones
        generator.feed(torch.stack(tokens[-1:], dim=1))
        stream = lab.caches._streams[(remote.channel.session_id.hex(), 0)]
        assert stream.tokens == generator.past_length
    finally:
        remote.close()
        remote.connection.close()


def _decode_step_bytes(lab, remote: RemoteTrunk, context: int) -> int:
    generator = lab.generator(remote)
    prompt = torch.randint(10, 200, (1, context), generator=torch.Generator().manual_seed(context))
    logits = generator.feed(prompt)
    before = remote.connection.bytes_sent
    generator.feed(logits.argmax(-1)[:, None])
    return remote.connection.bytes_sent - before


def test_bytes_per_decode_step_do_not_grow_with_the_context(lab):
    remote = lab.remote()
    try:
        short, long = _decode_step_bytes(lab, remote, 32), _decode_step_bytes(lab, remote, 512)
    finally:
        remote.close()
        remote.connection.close()
    # the same hidden-state bytes; only the varint-encoded position numbers (33 vs 513) grow by a byte
    assert 0 <= long - short <= 4, (short, long)
    assert long < 64 * 4 + 128  # one token's hidden state (fp32, H = 64) plus framing and encryption


def test_eight_concurrent_clients_are_correct_and_free_their_memory(lab):
    prompts = {name: f"prompt number {i} " + "word " * i for i, name in enumerate(NAMES)}
    expected = {name: lab.expected([prompt], 12) for name, prompt in prompts.items()}
    remotes = {name: lab.remote(name) for name in NAMES}
    produced: dict[str, torch.Tensor | BaseException] = {}
    calls_before = lab.caches.batched_calls

    def run(name: str) -> None:
        try:
            produced[name] = _run(lab.generator(remotes[name]), lab.tokenizer, [prompts[name]], 12)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            produced[name] = error

    threads = [threading.Thread(target=run, args=(name,)) for name in NAMES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert lab.caches.bytes_in_use > 0 and len(lab.caches.streams()) == len(NAMES)
    for remote in remotes.values():
        remote.close()
        remote.connection.close()
    for name in NAMES:
        assert isinstance(produced[name], torch.Tensor), produced[name]
        assert torch.equal(produced[name], expected[name]), name
    assert lab.caches.batched_calls > calls_before  # decode steps of different clients ran together
    assert lab.caches.bytes_in_use == 0 and lab.caches.streams() == []  # sessions closed: caches freed


def test_an_expired_cache_is_rebuilt_transparently(lab):
    remote = lab.remote()
    try:
        generator = lab.generator(remote)
        encoded = lab.tokenizer(["expiring prompt"], return_tensors="pt")
        tokens = []
        for index, token in enumerate(generator.generate(encoded.input_ids,
                                                         sampling=SamplingSettings(max_new_tokens=10))):
            tokens.append(token)
            if index == 4:
                assert lab.caches.expire(now=float("inf")) == 1  # the server forgets the stream mid-way
        produced = torch.cat([encoded.input_ids, torch.stack(tokens, dim=1)], dim=1)
        assert generator.restarts == 1 and torch.equal(produced, lab.expected(["expiring prompt"], 10))
    finally:
        remote.close()
        remote.connection.close()


def test_a_step_beyond_the_memory_budget_is_refused_and_the_server_goes_on(lab):
    remote = lab.remote()
    try:
        budget = lab.caches.budget_bytes
        lab.caches.budget_bytes = lab.caches.per_token * 100
        with pytest.raises(RemoteError, match="RESOURCE_EXHAUSTED.*cache_budget"):
            lab.generator(remote).feed(torch.randint(10, 200, (2, 60)))
        lab.caches.budget_bytes = budget
        assert torch.equal(_run(lab.generator(remote), lab.tokenizer, ["still serving"], 4),
                           lab.expected(["still serving"], 4))
    finally:
        remote.close()
        remote.connection.close()
