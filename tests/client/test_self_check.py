"""An honest client checks a round's average on held-out rows before adopting it: a poisoned average is
rejected and leaves the client's adapters as they were; an honest one is adopted; the held-out rows are
seeded, disjoint from the training rows and never more than a quarter of them."""

from __future__ import annotations

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.client.process import _federated_average, client_rows
from splitfed.client.self_check import AverageCheck, hold_out
from splitfed.client.settings import ClientSettings, SelfCheckSettings
from splitfed.models import LoraSpec, init_adapter, load_model, split_model
from splitfed.models.split import Partition
from splitfed.server import LocalTrunk
from splitfed.tasks import collate
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from splitfed.training.task_data import DataSettings, load_client_examples


@pytest.fixture(scope="module")
def data():
    """Two clients' RTE rows (tiny-llama's tokens), and alice's held-out batch."""
    model, tokenizer = load_model("tiny-llama")
    pad = int(tokenizer.pad_token_id)
    shards = [load_client_examples(DataSettings(task="rte", limit=48, shard=i, shards=2, seed=3,
                                                max_length=64), tokenizer) for i in range(2)]
    train, held = hold_out(shards[0], SelfCheckSettings(), 3)
    batches = {"alice": [collate(train[i:i + 2], pad_token_id=pad) for i in range(0, 16, 2)],
               "bob": [collate(shards[1][i:i + 2], pad_token_id=pad) for i in range(0, 16, 2)]}
    return model, batches, collate(held, pad_token_id=pad)


@pytest.fixture
def model(data):
    return data[0]


@pytest.fixture
def HELD_OUT(data):  # noqa: N802 - reads like the constant it is
    return data[2]


def _client(model, name: str, trunk: LocalTrunk | None = None,
            settings: OptimizerSettings | None = None) -> SplitClient:
    split = split_model(replicate(model), Partition(1, 1))
    for part in (split.head, split.tail):
        init_adapter(part, LoraSpec(r=4), 0)
    if trunk is None:
        init_adapter(split.trunk, LoraSpec(r=4), 0)
        trunk = LocalTrunk(split.trunk, settings)
    return SplitClient(name, split.head, split.tail, trunk, settings)


def _trained_pair(data, steps: int = 6) -> tuple[SplitClient, SplitClient]:
    """Two honest clients sharing a trunk, each trained on its own rows (lr 0.01)."""
    model, batches, _ = data
    settings = OptimizerSettings(lr=0.01)
    alice = _client(model, "alice", settings=settings)
    bob = _client(model, "bob", alice.trunk, settings)  # type: ignore[arg-type]
    for step in range(steps):
        alice.train_step(batches["alice"][step])
        bob.train_step(batches["bob"][step])
    return alice, bob


def _average(a: dict, b: dict) -> dict:
    return {part: {key: (a[part][key] + b[part][key]) / 2 for key in a[part]} for part in a}


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[part][key], b[part][key]) for part in a for key in a[part])


POISONS = {
    "every element 100": lambda own, other: {p: {k: torch.full_like(v, 100.0) for k, v in s.items()}
                                            for p, s in own.items()},
    # the attacker's adapters scaled x1000 and averaged with the honest client's at equal weight
    "scaled vector": lambda own, other: _average(own, {p: {k: v * 1000 for k, v in s.items()}
                                                       for p, s in other.items()}),
    "non-finite": lambda own, other: {p: {k: torch.full_like(v, float("nan")) for k, v in s.items()}
                                      for p, s in own.items()},
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_poisoned_average_is_rejected_and_the_adapters_stay(data, HELD_OUT, poison):
    alice, bob = _trained_pair(data)
    own = alice.adapter_states()
    check = AverageCheck(SelfCheckSettings(), HELD_OUT)
    verdict = check.apply(alice, 1, own, POISONS[poison](own, bob.adapter_states()), contributors=2)
    assert not verdict.adopted and _equal(alice.adapter_states(), own)
    assert check.rejected == 1 and check.adopted == 0
    assert verdict.loss_own == pytest.approx(alice.evaluation_loss(HELD_OUT), abs=1e-6)
    if poison != "non-finite":
        assert verdict.loss_average > check.allowed(verdict.loss_own)
    # the client trains on afterwards
    loss = alice.train_step(data[1]["alice"][7])
    assert torch.isfinite(torch.tensor(loss))


def test_an_honest_average_is_adopted(data, HELD_OUT):
    alice, bob = _trained_pair(data)
    average = _average(alice.adapter_states(), bob.adapter_states())
    check = AverageCheck(SelfCheckSettings(), HELD_OUT)
    verdict = check.apply(alice, 1, alice.adapter_states(), average, contributors=2)
    assert verdict.adopted and _equal(alice.adapter_states(), average)
    assert check.summary()["adopted"] == 1 and check.summary()["held_out_rows"] == 4
    assert check.history[0]["loss_own"] is not None and check.history[0]["loss_average"] is not None


def test_the_tolerance_decides(data, HELD_OUT):
    alice, bob = _trained_pair(data)
    own = alice.adapter_states()
    average = _average(own, bob.adapter_states())
    strict = AverageCheck(SelfCheckSettings(tolerance=0.0, min_tolerance=0.0), HELD_OUT)
    verdict = strict.apply(alice, 1, own, average, contributors=2)
    assert verdict.adopted == (verdict.loss_average <= verdict.loss_own)
    assert _equal(alice.adapter_states(), average if verdict.adopted else own)


def test_unchecked_when_alone_or_nothing_held_out(data, HELD_OUT):
    alice, bob = _trained_pair(data, steps=1)
    poisoned = POISONS["every element 100"](alice.adapter_states(), None)
    AverageCheck(SelfCheckSettings(), None).apply(alice, 1, alice.adapter_states(), poisoned, 2)
    assert _equal(alice.adapter_states(), poisoned)  # no held-out rows: adopted unchecked
    own = bob.adapter_states()
    verdict = AverageCheck(SelfCheckSettings(), HELD_OUT).apply(bob, 1, own, own, contributors=1)
    assert verdict.adopted and verdict.reason == "alone"


class _PlainRemote:
    """A server answering a plain round with a given average."""

    aggregation = "plain"

    def __init__(self, average: dict[str, torch.Tensor]) -> None:
        self.average = average

    def aggregate(self, round_index, weight, state):
        return self.average, 2


def test_the_round_applies_the_check(data, HELD_OUT):
    """``_federated_average``, where a client process adopts a round's average, checks it."""
    alice, _ = _trained_pair(data)
    own = alice.adapter_states()
    poisoned = {f"{p}/{k}": torch.full_like(v, 100.0) for p, s in own.items() for k, v in s.items()}
    check = AverageCheck(SelfCheckSettings(), HELD_OUT)
    _federated_average(alice, _PlainRemote(poisoned), 1, 8, check)  # type: ignore[arg-type]
    assert _equal(alice.adapter_states(), own) and check.rejected == 1


def test_held_out_rows_are_seeded_disjoint_and_bounded():
    rows = list(range(40))
    settings = SelfCheckSettings(rows=4)
    train, held = hold_out(rows, settings, 7)
    assert (train, held) == hold_out(rows, settings, 7)  # reproducible
    assert len(held) == 4 and not set(train) & set(held) and sorted(train + held) == rows
    assert train == sorted(train)  # the training rows keep their order
    assert hold_out(rows, settings, 8)[1] != held
    assert len(hold_out(rows[:8], settings, 7)[1]) == 2  # a quarter at most
    assert hold_out(rows[:3], settings, 7) == (rows[:3], [])
    assert hold_out(rows, SelfCheckSettings(enabled=False), 7) == (rows, [])


def test_client_rows_hold_out_only_with_fedavg(tmp_path):
    base = {"name": "alice", "identity": tmp_path / "k", "server_key": tmp_path / "s.pub"}
    rows = [{"row": i} for i in range(20)]
    train, held = client_rows(ClientSettings(**base), rows)
    assert len(held) == 4 and len(train) == 16
    assert client_rows(ClientSettings(**base, fedavg=False), rows) == (rows, [])
    other_shard = client_rows(ClientSettings(**base, data={"shard": 1, "shards": 2}), rows)[1]
    assert other_shard != held
