"""Secure aggregation of FedAvg rounds over the network: the clients get the plain weighted average, the
server only ever holds masked input, and a client dropping out mid-round leaves the average of the rest."""

from __future__ import annotations

import threading

import pytest
import torch

from splitfed.aggregation import RoundRoster, SecAggClient
from splitfed.aggregation.fedavg import weighted_average
from splitfed.aggregation.fixed_point import DEFAULT_SCALE, decode
from splitfed.client.process import AggregationRefused, check_aggregation
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.client.secure_aggregation import ADVERTISE, MASKED, SHARE, secure_average
from splitfed.client.settings import ClientSettings
from splitfed.models import LoraSpec, Partition, init_adapter, load_model, split_model
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server import LocalTrunk
from splitfed.server.modes import SequentialMode
from splitfed.server.trunk_service import ServiceLimits, TrunkService
from splitfed.transport import pb
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve

NAMES = ("alice", "bob", "carol")
WEIGHTS = {"alice": 3.0, "bob": 5.0, "carol": 2.0}


class Federation:
    """A live trunk server on 127.0.0.1 and one connected session per client."""

    def __init__(self, aggregation: str = "secure", turn_timeout_s: float = 30.0) -> None:
        model, _ = load_model("tiny-llama")
        split = split_model(model, Partition(1, 1))
        init_adapter(split.trunk, LoraSpec(r=4), 0)
        self.server_identity = Identity.generate("server")
        self.people = {name: Identity.generate(name) for name in NAMES}
        allow = AllowList([identity.public for identity in self.people.values()])
        self.service = TrunkService(SequentialMode(LocalTrunk(split.trunk)),
                                    ServerHandshake(self.server_identity, allow),
                                    limits=ServiceLimits(turn_timeout_s=turn_timeout_s),
                                    aggregation=aggregation)
        self.server, port = serve(self.service, "127.0.0.1:0", allow_insecure_loopback=True)
        self.address = f"127.0.0.1:{port}"
        self.remotes = {name: self.connect(name) for name in NAMES}
        self.received: list[tuple[str, int, object]] = []
        submit = self.service.rounds.submit

        def recording_submit(client, round_index, phase, value):
            self.received.append((client, phase, value))
            return submit(client, round_index, phase, value)

        self.service.rounds.submit = recording_submit

    def connect(self, name: str) -> RemoteTrunk:
        connection = TrunkConnection(self.address, allow_insecure_loopback=True, timeout_s=60)
        remote = RemoteTrunk(connection, self.people[name], self.server_identity.public)
        remote.connect((1, 3), 64)
        return remote

    def stop(self) -> None:
        for remote in self.remotes.values():
            remote.connection.close()
        self.server.stop(0)


def _states(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {name: {"head/lora_A": torch.randn(4, 64, generator=generator),
                   "tail/lora_B": torch.randn(64, 4, generator=generator) * 10} for name in NAMES}


def _run_round(federation: Federation, states, names, round_index: int = 1) -> dict[str, object]:
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = secure_average(federation.remotes[name], name, round_index, WEIGHTS[name],
                                           states[name])
        except Exception as error:  # noqa: BLE001 - handed to the test thread
            results[name] = error

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.fixture
def federation():
    federation = Federation()
    yield federation
    federation.stop()


def test_secure_round_gives_the_plain_weighted_average(federation):
    states = _states()
    results = _run_round(federation, states, NAMES)
    expected = weighted_average([states[n] for n in NAMES], [WEIGHTS[n] for n in NAMES])
    for name in NAMES:
        assert not isinstance(results[name], Exception), results[name]
        average, contributors = results[name]
        assert contributors == 3
        for key, value in expected.items():
            assert (average[key] - value).abs().max().item() <= 1e-5, (name, key)
    # the next round runs on the same sessions
    states = _states(seed=1)
    results = _run_round(federation, states, NAMES, round_index=2)
    expected = weighted_average([states[n] for n in NAMES], [WEIGHTS[n] for n in NAMES])
    average, _ = results["bob"]
    assert (average["tail/lora_B"] - expected["tail/lora_B"]).abs().max().item() <= 1e-5


def test_the_server_receives_only_masked_input(federation):
    states = _states()
    _run_round(federation, states, NAMES)
    masked = {client: value for client, phase, value in federation.received if phase == MASKED}
    assert set(masked) == set(NAMES)
    for name, (tensors, weight) in masked.items():
        assert weight == WEIGHTS[name]  # weights are public in this design
        for key, value in tensors.items():
            assert value.dtype == torch.int64
            seen = decode(value, DEFAULT_SCALE) / weight  # what the server could read from it alone
            true = states[name][key].double()
            assert (seen - true).abs().mean().item() > 1e6  # uniformly random mod 2**64, not the update
            correlation = torch.corrcoef(torch.stack([seen.flatten(), true.flatten()]))[0, 1].abs()
            assert correlation < 0.3
    shares = [value for _, phase, value in federation.received if phase == SHARE]
    plain_keys = [value for _, phase, value in federation.received if phase == ADVERTISE]
    assert all(len(key) == 64 for key in plain_keys) and len(shares) == 3


def _advertise_and_share(remote: RemoteTrunk, name: str, round_index: int) -> None:
    """What a client does before it vanishes: phases 1 and 2 of the round, then nothing."""
    client = SecAggClient(name, None, 2)
    first = remote.secagg(pb.SecAggRequest(round=round_index, phase=ADVERTISE, keys=client.advertise()))
    roster = RoundRoster.from_bytes(first.roster)
    client.threshold = int(first.threshold)
    remote.secagg(pb.SecAggRequest(round=round_index, phase=SHARE, shares=client.share_keys(roster)))


def test_a_client_dropping_out_mid_round_leaves_the_average_of_the_rest():
    federation = Federation(turn_timeout_s=3.0)
    try:
        states = _states()
        carol = federation.remotes["carol"]
        dropper = threading.Thread(target=_advertise_and_share, args=(carol, "carol", 1))
        dropper.start()
        results = _run_round(federation, states, ("alice", "bob"))
        dropper.join(timeout=60)
        expected = weighted_average([states["alice"], states["bob"]], [WEIGHTS["alice"], WEIGHTS["bob"]])
        for name in ("alice", "bob"):
            assert not isinstance(results[name], Exception), results[name]
            average, contributors = results[name]
            assert contributors == 2
            for key, value in expected.items():
                assert (average[key] - value).abs().max().item() <= 1e-5, (name, key)
        # carol, back late, is told the round went on without it; the next round includes it again
        with pytest.raises(RemoteError, match="bad_round"):
            federation.remotes["carol"].secagg(pb.SecAggRequest(round=1, phase=MASKED, weight=1.0))
        results = _run_round(federation, states, NAMES, round_index=2)
        assert all(result[1] == 3 for result in results.values()), results
    finally:
        federation.stop()


def test_a_round_below_the_threshold_fails_cleanly_for_the_survivor():
    federation = Federation(turn_timeout_s=2.0)
    try:
        droppers = [threading.Thread(target=_advertise_and_share, args=(federation.remotes[n], n, 1))
                    for n in ("bob", "carol")]
        for thread in droppers:
            thread.start()
        results = _run_round(federation, _states(), ("alice",))
        for thread in droppers:
            thread.join(timeout=60)
        assert isinstance(results["alice"], RemoteError)
        assert "fewer than the threshold" in str(results["alice"])
    finally:
        federation.stop()


def test_a_lone_client_keeps_its_adapters():
    federation = Federation()
    try:
        for name in ("bob", "carol"):
            federation.remotes[name].close()
        state = _states()["alice"]
        average, contributors = secure_average(federation.remotes["alice"], "alice", 1, 1.0, state)
        assert contributors == 1 and all(torch.equal(average[k], v) for k, v in state.items())
    finally:
        federation.stop()


def test_plain_and_secure_sides_refuse_each_other(tmp_path):
    secure = Federation()
    try:
        with pytest.raises(RemoteError, match="secure_aggregation_required"):
            secure.remotes["alice"].aggregate(1, 1.0, {"x": torch.ones(2)})
    finally:
        secure.stop()
    plain = Federation(aggregation="plain")
    try:
        assert plain.remotes["alice"].aggregation == "plain"
        settings = ClientSettings(name="alice", identity=tmp_path / "k", server_key=tmp_path / "s.pub")
        with pytest.raises(AggregationRefused, match="aggregates FedAvg rounds in plain"):
            check_aggregation(settings, plain.remotes["alice"])
        check_aggregation(settings.model_copy(update={"require_secure_aggregation": False}),
                          plain.remotes["alice"])
    finally:
        plain.stop()
