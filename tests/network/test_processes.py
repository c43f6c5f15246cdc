"""A real server and two real client processes over TLS on 127.0.0.1, with encrypted payloads, end
with the same adapters as the same split training in one process."""

from __future__ import annotations

import json

import torch

from splitfed.client import SplitClient
from splitfed.client.settings import ClientSettings
from splitfed.config import build_settings
from splitfed.models import adapter_state, init_adapter, load_model, split_model
from splitfed.models.adapters import read_adapter
from splitfed.server import LocalTrunk
from splitfed.tasks import collate
from splitfed.training.data import shuffled_batches
from splitfed.training.replicate import replicate
from splitfed.training.task_data import load_client_examples
from tests.network.conftest import CLIENTS, splitfed, wait_for_port

STEPS = 10  # per client: 20 trunk steps in all


def _reference(configs) -> dict[str, dict[str, torch.Tensor]]:
    """The same training in one process: both clients take turns (roster order) against one trunk."""
    settings = [build_settings(ClientSettings, path) for path in configs]
    model, tokenizer = load_model(settings[0].model)
    server_split = split_model(model, settings[0].partition.partition())
    init_adapter(server_split.trunk, settings[0].adapter, settings[0].seed)
    trunk = LocalTrunk(server_split.trunk, settings[0].optimizer)
    initial = adapter_state(trunk.trunk)
    clients, batches = [], []
    for s in settings:
        split = split_model(replicate(model), s.partition.partition())
        init_adapter(split.head, s.adapter, s.seed)
        init_adapter(split.tail, s.adapter, s.seed)
        clients.append(SplitClient(s.name, split.head, split.tail, trunk, s.optimizer))
        examples = load_client_examples(s.data, tokenizer)
        batches.append(shuffled_batches(examples, s.batch_size, s.seed + s.data.shard,
                                        lambda rows: collate(rows, pad_token_id=int(tokenizer.pad_token_id))))
    for _ in range(STEPS):
        for client, stream in zip(clients, batches, strict=True):
            client.train_step(next(stream))
    states = {"server/trunk": adapter_state(trunk.trunk)}
    moved = max((states["server/trunk"][k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3, "the reference did not train"

    for s, client in zip(settings, clients, strict=True):
        states[f"{s.name}/head"] = adapter_state(client.head)
        states[f"{s.name}/tail"] = adapter_state(client.tail)
    return states


def test_two_client_processes_train_like_one_process(deployment):
    root = deployment.root
    server = splitfed("serve", "--config", str(deployment.server_config()), "--roster", ",".join(CLIENTS),
                      "--exit-when-done", log=root / "server.log")
    try:
        port = wait_for_port(root / "port", server)
        configs = [deployment.client_config(name, shard, STEPS) for shard, name in enumerate(CLIENTS)]
        clients = [splitfed("train", "--config", str(path), "--server", f"127.0.0.1:{port}",
                            log=root / f"{path.stem}.log") for path in configs]
        for process in clients:
            assert process.wait(timeout=300) == 0, (root / "alice.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
    finally:
        for process in [server, *locals().get("clients", [])]:
            if process.poll() is None:
                process.kill()
    server_log = (root / "server.log").read_text()
    assert "trunk adapter after 20 steps" in server_log
    assert "Traceback" not in server_log

    reference = _reference(configs)
    for key, expected in reference.items():
        _, got = read_adapter(root / "out" / key)
        assert set(got) == set(expected) and expected, key
        for name, value in expected.items():
            assert (got[name] - value).abs().max().item() <= 1e-5, (key, name)
    summary = json.loads((root / "out" / "alice" / "summary.json").read_text())
    assert len(summary["losses"]) == STEPS and summary["bytes_sent"] > 0
