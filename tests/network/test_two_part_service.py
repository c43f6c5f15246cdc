"""The two-part layout over the network: a real server (LM head and loss on it) and a client process
that keeps only the head end with the same adapters as the same run in one process; the server refuses
three-part messages and mismatched clients."""

from __future__ import annotations

from splitfed.client.settings import ClientSettings
from splitfed.config import build_settings
from splitfed.federation import FederationSettings, InProcessFederation
from splitfed.models import adapter_state, load_model
from splitfed.models.adapters import read_adapter
from splitfed.tasks import collate
from splitfed.training.task_data import load_client_examples
from tests.network.conftest import splitfed, wait_for_port

STEPS = 2
TWO_PART = "partition: {head: 1, layout: two-part}\n"


def test_two_part_client_process_trains_like_one_process(deployment):
    root = deployment.root
    server_config = deployment.server_config()
    server_config.write_text(server_config.read_text().replace("partition: {head: 1, tail: 1}\n", TWO_PART))
    server = splitfed("serve", "--config", str(server_config), "--roster", "alice", "--exit-when-done",
                      log=root / "server.log")
    try:
        port = wait_for_port(root / "port", server)
        config = deployment.client_config("alice", 0, STEPS)
        config.write_text(config.read_text().replace("partition: {head: 1, tail: 1}\n", TWO_PART))
        wrong = splitfed("train", "--config", str(deployment.client_config("bob", 1, STEPS)), "--server",
                         f"127.0.0.1:{port}", log=root / "bob.log")
        assert wrong.wait(timeout=120) != 0
        assert "two-part layout" in (root / "bob.log").read_text()
        client = splitfed("train", "--config", str(config), "--server", f"127.0.0.1:{port}",
                          log=root / "alice.log")
        assert client.wait(timeout=300) == 0, (root / "alice.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
    finally:
        for process in (server,):
            if process.poll() is None:
                process.kill()
    assert "receives every client's labels" in (root / "server.log").read_text()

    settings = build_settings(ClientSettings, config)
    model, tokenizer = load_model(settings.model)
    federation = InProcessFederation(
        model, [load_client_examples(settings.data, tokenizer)],
        lambda rows: collate(rows, pad_token_id=int(tokenizer.pad_token_id)),
        FederationSettings(clients=1, rounds=1, local_steps=STEPS, batch_size=settings.batch_size,
                           seed=settings.seed, partition=settings.partition, adapter=settings.adapter,
                           optimizer=settings.optimizer))
    federation.train_round()
    expected = {"server/trunk": adapter_state(federation.server.trunk),
                "alice/head": adapter_state(federation.clients[0].head)}
    for key, state in expected.items():
        _, got = read_adapter(root / "out" / key)
        assert set(got) == set(state) and state
        for name, value in state.items():
            assert (got[name] - value).abs().max().item() <= 1e-5, (key, name)
