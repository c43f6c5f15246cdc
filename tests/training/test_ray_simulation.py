"""The federation simulated on Ray (a local Ray instance, 2 CPUs): with one sub-server it trains
exactly as the in-process federation (losses, every adapter, a noise defense included); with two, each
group trains against its own trunk and the trunks are averaged by samples, checked against the same
steps done by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from splitfed.aggregation.fedavg import weighted_average
from splitfed.federation import InProcessFederation, PartitionSettings
from splitfed.federation.inprocess import build_client
from splitfed.federation.simulation import RayFederation
from splitfed.models import adapter_state, init_adapter, split_model
from splitfed.privacy import ChannelSettings, PrivacySettings
from splitfed.server import LocalTrunk
from splitfed.training.data import shuffled_batches
from splitfed.training.replicate import replicate
from tests.training.test_training import _collate, _examples, _settings


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_one_sub_server_trains_exactly_as_the_in_process_federation(local_ray, model):
    shards = [_examples(3, seed=2), _examples(5, seed=3), _examples(4, seed=4)]
    privacy = PrivacySettings(forward=ChannelSettings(clip=5.0, sigma=0.01), seed=11)
    settings = _settings(clients=3, rounds=2, local_steps=2, batch_size=2, optimizer={"lr": 1e-2},
                         privacy=privacy)
    reference = InProcessFederation(model, shards, _collate, settings)
    simulated = RayFederation("tiny-llama", model, shards, _collate, settings, sub_servers=1, hosts=1)
    try:
        for _ in range(settings.rounds):
            expected = reference.train_round()
            losses = simulated.train_round()
            assert losses == pytest.approx(expected, abs=1e-6)
        assert _close(simulated.trunk_adapters()[0], adapter_state(reference.server.trunk)) <= 1e-6
        for index, client in enumerate(reference.clients):
            states = simulated.client_adapters(index)
            for part in ("head", "tail"):
                assert _close(states[part], client.adapter_states()[part]) <= 1e-6, (index, part)
        ids = torch.tensor([[5, 9, 14, 3]])
        assert torch.allclose(simulated.logits(ids), reference.logits(ids), atol=1e-5)
        reports = simulated.privacy_reports()
        assert len(reports) == 3 and reports == reference.privacy_reports()
        split = simulated.split()  # the trained model in this process
        assert _close(adapter_state(split.trunk), adapter_state(reference.server.trunk)) <= 1e-6
    finally:
        simulated.close()


def test_two_sub_servers_average_their_trunks_by_samples(local_ray, model):
    shards = [_examples(3, seed=5), _examples(6, seed=6), _examples(2, seed=7), _examples(4, seed=8)]
    settings = _settings(clients=4, rounds=1, local_steps=2, batch_size=3, optimizer={"lr": 1e-2})
    simulated = RayFederation("tiny-llama", model, shards, _collate, settings, sub_servers=2, hosts=1)
    try:
        simulated.train_round()
        trunks = simulated.trunk_adapters()
        clients = [simulated.client_adapters(i) for i in range(4)]
    finally:
        simulated.close()

    # the same steps by hand: clients 0 and 2 against trunk 0, clients 1 and 3 against trunk 1
    sizes = [len(shard) for shard in shards]
    hand_trunks, samples, hand_clients = [], [], {}
    for group in ([0, 2], [1, 3]):
        trunk = split_model(replicate(model), settings.partition.partition()).trunk
        init_adapter(trunk, settings.adapter, settings.seed)
        server = LocalTrunk(trunk, settings.optimizer)
        members = {i: build_client(model, i, settings, sizes, server, None) for i in group}
        batches = {i: shuffled_batches(shards[i], settings.batch_size, settings.seed + i, _collate)
                   for i in group}
        rows = 0
        for _ in range(settings.local_steps):
            for i in group:
                batch = next(batches[i])
                members[i].train_step(batch)
                rows += batch["input_ids"].shape[0]
        hand_trunks.append(adapter_state(trunk))
        samples.append(rows)
        hand_clients.update({i: c.adapter_states() for i, c in members.items()})
    assert samples == [3 + 2 + 3 + 2, 3 + 3 + 3 + 3]  # a client smaller than a batch trains on all it has
    expected_trunk = weighted_average(hand_trunks, samples)
    assert _close(trunks[0], expected_trunk) <= 1e-6 and _close(trunks[1], expected_trunk) <= 1e-6
    assert _close(hand_trunks[0], hand_trunks[1]) > 1e-4  # the groups did train apart
    for part in ("head", "tail"):
        expected = weighted_average([hand_clients[i][part] for i in range(4)], sizes)
        for index in range(4):
            assert _close(clients[index][part], expected) <= 1e-6, (index, part)


def test_impossible_simulations_are_refused(local_ray, model):
    shards = [_examples(2, seed=1), _examples(2, seed=2)]
    with pytest.raises(ValueError, match="sub_servers"):
        RayFederation("tiny-llama", model, shards, _collate, _settings(clients=2), sub_servers=3)
    two_part = _settings(clients=2, partition=PartitionSettings(head=1, tail=0, layout="two-part"))
    with pytest.raises(ValueError, match="three-part"):
        RayFederation("tiny-llama", model, shards, _collate, two_part)


def test_simulate_command_trains_and_scores_the_ray_row(local_ray, tmp_path):
    from typer.testing import CliRunner

    from splitfed.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--clients", "4", "--sub-servers", "1", "--hosts", "1",
                                 "--model", "tiny-llama", "--local-steps", "2", "--train-examples", "12",
                                 "--eval-examples", "4", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["settings"]["simulation"]["hosts"] == 1
    [row] = saved["results"]
    assert row["method"] == "federated-ray" and row["metrics"]["n"] == 4
    assert len(row["losses"]) == 4 * 2 and all(math.isfinite(loss) for loss in row["losses"])
    assert "4 clients simulated on Ray (1 sub-server(s))" in (tmp_path / "results.md").read_text()

    refused = runner.invoke(app, ["simulate", "--backend", "mpi", "--output", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "ray or inprocess" in refused.output
