"""Issue 40, item 2, against a live trunk server on 127.0.0.1 under secure aggregation, with an honest
client training: an enrolled attacker cannot take the average over, neither in round 1 (a claimed weight
of 6.4e7, or its granted weight with every element 100) nor by creeping (a vector at 1.9 x the last
average's norm, rounds 2-5). Measured: cosine(what the honest client holds after each round, the
attacker's vector) < 0.5, and the honest client's final loss within 2% of the same client training
alone. Every loop is bounded (rounds, steps, thread joins)."""

from __future__ import annotations

import threading

import pytest
import torch

from splitfed.aggregation import RoundRoster, SecAggClient
from splitfed.aggregation.robust import RobustAggregationSettings
from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.client.secure_aggregation import ADVERTISE, MASKED, REVEAL, SHARE, secure_average
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server import LocalTrunk
from splitfed.server.modes import SequentialMode
from splitfed.server.trunk_service import ServiceLimits, TrunkService
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate
from splitfed.transport import encode_int64, pb
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve

HIDDEN = 64
ROUNDS, STEPS = 5, 5  # honest steps per round
BATCH = 2
CLAIMED = 6.4e7
OPTIMIZER = OptimizerSettings(lr=2e-3)  # every party: the loss falls well within 25 steps


class Federation:
    """A live server (secure aggregation, the robust defaults) with alice (honest) and mallory."""

    def __init__(self) -> None:
        self.model, _ = load_model("tiny-llama")
        self.server_identity = Identity.generate("server")
        self.people = {name: Identity.generate(name) for name in ("alice", "mallory")}
        split = split_model(replicate(self.model), Partition(1, 1))
        init_adapter(split.trunk, LoraSpec(r=4), 0)
        limits = ServiceLimits(max_batch=8, max_length=64, step_timeout_s=5.0, turn_timeout_s=30.0,
                               round_straggler_s=1.0)
        self.service = TrunkService(SequentialMode(LocalTrunk(split.trunk, OPTIMIZER)),
                                    ServerHandshake(self.server_identity,
                                                    AllowList([p.public for p in self.people.values()])),
                                    limits=limits, robust_aggregation=RobustAggregationSettings())
        self.server, port = serve(self.service, "127.0.0.1:0", allow_insecure_loopback=True)
        self.address = f"127.0.0.1:{port}"

    def client(self, name: str) -> SplitClient:
        split = split_model(replicate(self.model), Partition(1, 1))
        init_adapter(split.head, LoraSpec(r=4), 0)
        init_adapter(split.tail, LoraSpec(r=4), 0)
        remote = RemoteTrunk(TrunkConnection(self.address, allow_insecure_loopback=True, timeout_s=60),
                             self.people[name], self.server_identity.public)
        remote.connect((1, 3), HIDDEN)
        return SplitClient(name, split.head, split.tail, remote, OPTIMIZER)

    def stop(self) -> None:
        self.server.stop(0)


def _flat(client: SplitClient) -> dict[str, torch.Tensor]:
    return {f"{part}/{key}": value for part, state in client.adapter_states().items()
            for key, value in state.items()}


def _load(client: SplitClient, average: dict[str, torch.Tensor]) -> None:
    states = client.adapter_states()
    client.load_adapter_states({part: {key: average[f"{part}/{key}"] for key in state}
                                for part, state in states.items()})


def _vector(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].double().reshape(-1) for k in sorted(state)])


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.nn.functional.cosine_similarity(_vector(a), _vector(b), dim=0))


def _claiming_average(remote: RemoteTrunk, name: str, round_index: int, weight: float,
                      state: dict[str, torch.Tensor]) -> None:
    """The attacker's round: as ``secure_average``, but masking with the weight it claims, whatever the
    server granted."""
    client = SecAggClient(name, None, 2)
    first = remote.secagg(pb.SecAggRequest(round=round_index, phase=ADVERTISE, keys=client.advertise()))
    client.threshold = int(first.threshold)
    shares = client.share_keys(RoundRoster.from_bytes(first.roster))
    routed = remote.secagg(pb.SecAggRequest(round=round_index, phase=SHARE, shares=shares))
    client.receive_shares(dict(routed.shares))
    masked = client.mask(state, weight)
    request = pb.SecAggRequest(round=round_index, phase=MASKED, weight=weight)
    for key in sorted(masked):
        request.tensors.add(name=key, tensor=encode_int64(masked[key]))
    lists = remote.secagg(request)
    revealed = client.unmask_shares(list(lists.survivors), list(lists.dropped))
    remote.secagg(pb.SecAggRequest(round=round_index, phase=REVEAL, shares=revealed))


def _round(client: SplitClient, name: str, round_index: int, weight: float,
           state: dict[str, torch.Tensor], obey: bool = True) -> object:
    """One secure round in a thread; the average, or the error."""
    result: dict[str, object] = {}
    average = secure_average if obey else _claiming_average

    def run() -> None:
        try:
            result["value"] = average(client.trunk, name, round_index, weight, state)
        except (RemoteError, RuntimeError) as error:
            result["value"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _batch(seed: int, length: int = 12) -> dict[str, torch.Tensor]:
    """Counting sequences (each token the previous + 1) from random starts: a rule worth learning."""
    starts = torch.randint(3, 200, (BATCH, 1), generator=torch.Generator().manual_seed(seed))
    input_ids = starts + torch.arange(length)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def _train(client: SplitClient, seed: int) -> float:
    return client.train_step(_batch(seed))


def _attacker_vector(kind: str, round_index: int, shape_of: dict[str, torch.Tensor],
                     last_average: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """What mallory masks this round, or None: it trains like an honest client and sends its own."""
    if kind == "honest":
        return None
    if kind in ("round1-claim", "round1-scaled"):
        return {k: torch.full_like(v, 100.0) for k, v in shape_of.items()} if round_index == 1 else None
    if round_index == 1 or last_average is None:
        return None
    generator = torch.Generator().manual_seed(100 + round_index)
    direction = {k: torch.randn(v.shape, generator=generator) for k, v in shape_of.items()}
    scale = 1.9 * float(_vector(last_average).norm()) / float(_vector(direction).norm())
    return {k: v * scale for k, v in direction.items()}


def _run(attack: str | None) -> dict[str, object]:
    """The honest client's losses, and per attacked round the cosine of what it holds after the round
    with the attacker's vector; ``attack`` None: alice trains alone, the same steps and batches."""
    federation = Federation()
    try:
        alice = federation.client("alice")
        mallory = federation.client("mallory") if attack is not None else None
        losses, cosines, last_average = [], [], None
        for round_index in range(1, ROUNDS + 1):
            for step in range(STEPS):
                seed = (round_index - 1) * STEPS + step
                losses.append(_train(alice, seed))
                if mallory is not None:
                    _train(mallory, 1000 + seed)  # its training rows are its weight
            if mallory is None:
                continue
            poison = _attacker_vector(attack, round_index, _flat(mallory), last_average)
            claimed = CLAIMED if attack == "round1-claim" else float(STEPS * BATCH)
            honest_thread, honest = _round(alice, "alice", round_index, float(STEPS * BATCH), _flat(alice))
            sent = poison if poison is not None else _flat(mallory)
            obey = attack != "round1-claim"
            evil_thread, _ = _round(mallory, "mallory", round_index, claimed, sent, obey=obey)
            for thread in (honest_thread, evil_thread):
                thread.join(timeout=120)
                assert not thread.is_alive()
            if not isinstance(honest["value"], Exception):
                average, _ = honest["value"]
                _load(alice, average)
                last_average = average
                if poison is None:
                    _load(mallory, average)
            if poison is not None or attack == "honest":
                poison = poison if poison is not None else _flat(mallory)
                cosines.append(_cosine(_flat(alice), poison))
        guard = federation.service.rounds.guard
        return {"losses": losses, "cosines": cosines, "status": federation.service.status(),
                "moves": list(guard._steps)}
    finally:
        federation.stop()


@pytest.fixture(scope="module")
def alone() -> list[float]:
    return _run(None)["losses"]


def test_an_honest_federation_is_never_rejected(alone):
    outcome = _run("honest")
    print("honest: first/final loss", outcome["losses"][0], outcome["losses"][-1], "alone", alone[-1],
          "moves a round", outcome["moves"])
    assert outcome["status"]["rounds_rejected"] == 0, outcome["status"]["last_round_rejection"]
    assert outcome["status"]["secure_rounds"] == ROUNDS


@pytest.mark.parametrize("attack", ["round1-claim", "round1-scaled", "creep-1.9x"])
def test_an_enrolled_client_cannot_take_the_secure_average_over(attack, alone):
    outcome = _run(attack)
    losses, cosines, status = outcome["losses"], outcome["cosines"], outcome["status"]
    print(attack, "cosines", cosines, "final", losses[-1], "alone", alone[-1], "status",
          {k: v for k, v in status.items() if "reject" in str(k)})
    assert len(losses) == ROUNDS * STEPS and cosines
    assert max(cosines) < 0.5, cosines
    assert abs(losses[-1] - alone[-1]) <= 0.02 * abs(alone[-1]), (losses[-1], alone[-1])
    if attack != "round1-claim":  # the claim is refused at the masked input; the others at the average
        assert status["rounds_rejected"] >= 1 and "rejected" in status["last_round_rejection"]
