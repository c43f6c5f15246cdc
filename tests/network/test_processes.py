"""A real server and two real client processes over TLS on 127.0.0.1, with encrypted payloads and
FedAvg rounds through the server, end with the same adapters as the same federation in one process
(alice sends each step in two pipelined micro-batches, which changes nothing but the timing)."""

from __future__ import annotations

import json

from splitfed.client.process import client_rows
from splitfed.client.settings import ClientSettings
from splitfed.config import build_settings
from splitfed.federation import FederationSettings, InProcessFederation
from splitfed.models import adapter_state, init_adapter, load_adapter_state, load_model, split_model
from splitfed.models.adapters import read_adapter
from splitfed.privacy.public import warm_up_text
from splitfed.tasks import collate
from splitfed.training.task_data import load_client_examples
from tests.network.conftest import CLIENTS, splitfed, wait_for_port

STEPS, ROUNDS = 10, 2  # per client: 20 trunk steps in all, FedAvg after steps 5 and 10


def _reference(configs) -> dict[str, dict]:
    """The same run in one process: InProcessFederation with the clients' shards and settings."""
    settings = [build_settings(ClientSettings, path) for path in configs]
    first = settings[0]
    model, tokenizer = load_model(first.model)
    # the rows each client holds out to check round averages are not trained on
    shards = [client_rows(s, load_client_examples(s.data, tokenizer))[0] for s in settings]
    learned = first.privacy.learned
    federation = InProcessFederation(
        model, shards, lambda rows: collate(rows, pad_token_id=int(tokenizer.pad_token_id)),
        FederationSettings(clients=len(settings), rounds=ROUNDS, local_steps=STEPS // ROUNDS,
                           batch_size=first.batch_size, seed=first.seed, partition=first.partition,
                           adapter=first.adapter, optimizer=first.optimizer, privacy=first.privacy),
        public_text=None if learned is None else warm_up_text(learned, tokenizer))
    initial = adapter_state(federation.server.trunk)
    for _ in range(ROUNDS):
        federation.train_round()
    states = {"server/trunk": adapter_state(federation.server.trunk)}
    moved = max((states["server/trunk"][k] - v).abs().max().item() for k, v in initial.items())
    assert moved > 1e-3, "the reference did not train"
    for s, client in zip(settings, federation.clients, strict=True):
        states[f"{s.name}/head"] = adapter_state(client.head)
        states[f"{s.name}/tail"] = adapter_state(client.tail)
    return states


def test_two_client_processes_train_like_one_process(deployment):
    root = deployment.root
    server = splitfed("serve", "--config", str(deployment.server_config()), "--roster", ",".join(CLIENTS),
                      "--exit-when-done", log=root / "server.log")
    clients = []
    try:
        port = wait_for_port(root / "port", server)
        micro = {"alice": "micro_batches: 2\n", "bob": ""}
        configs = [deployment.client_config(name, shard, STEPS, f"rounds: {ROUNDS}\n" + micro[name])
                   for shard, name in enumerate(CLIENTS)]
        clients = [splitfed("train", "--config", str(path), "--server", f"127.0.0.1:{port}",
                            log=root / f"{path.stem}.log") for path in configs]
        for process, name in zip(clients, CLIENTS, strict=True):
            assert process.wait(timeout=300) == 0, (root / f"{name}.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
    finally:
        for process in [server, *clients]:
            if process.poll() is None:
                process.kill()
    server_log = (root / "server.log").read_text()
    assert "trunk adapter after 20 steps" in server_log
    assert "round 2 securely averaged over alice, bob" in server_log
    assert "Traceback" not in server_log

    assert "in 2 pipelined micro-batches" in (root / "alice.log").read_text()
    logs = "".join(path.read_text() for path in root.glob("*.log"))
    for key_file in [*deployment.keys.glob("*.key"), deployment.keys / "tls-key.pem"]:
        body = [line for line in key_file.read_text().splitlines() if line and "-----" not in line]
        assert body and not any(line in logs for line in body), f"{key_file.name} leaked into a log"

    reference = _reference(configs)
    for key, expected in reference.items():
        _, got = read_adapter(root / "out" / key)
        assert set(got) == set(expected) and expected, key
        for name, value in expected.items():
            assert (got[name] - value).abs().max().item() <= 1e-5, (key, name)
    summary = json.loads((root / "out" / "alice" / "summary.json").read_text())
    assert len(summary["losses"]) == STEPS and summary["bytes_sent"] > 0


def test_generate_with_the_adapters_training_saved(deployment):
    """`splitfed train` then `splitfed serve` with the trained trunk and `splitfed generate`: the printed
    text is the whole model's greedy continuation with the same three adapters."""
    root = deployment.root
    server = splitfed("serve", "--config", str(deployment.server_config()), "--roster", "alice",
                      "--exit-when-done", log=root / "server.log")
    try:
        port = wait_for_port(root / "port", server)
        config = deployment.client_config("alice", 0, 4, "fedavg: false\n")
        trainer = splitfed("train", "--config", str(config), "--server", f"127.0.0.1:{port}",
                           log=root / "train.log")
        assert trainer.wait(timeout=300) == 0, (root / "train.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
        (root / "port").unlink()
        server = splitfed("serve", "--config", str(deployment.server_config()), "--set",
                          f"trunk_adapter={root / 'out' / 'server' / 'trunk'}", log=root / "server2.log")
        port = wait_for_port(root / "port", server)
        generator = splitfed("generate", "--config", str(config), "--server", f"127.0.0.1:{port}",
                             "--prompt", "hello", "--max-new-tokens", "8", log=root / "generate.log")
        assert generator.wait(timeout=300) == 0, (root / "generate.log").read_text()[-3000:]
        looked_up = splitfed("generate", "--config", str(config), "--server", f"127.0.0.1:{port}",
                             "--prompt", "hello", "--max-new-tokens", "8", "--lookup", "4",
                             log=root / "lookup.log")
        assert looked_up.wait(timeout=300) == 0, (root / "lookup.log").read_text()[-3000:]
    finally:
        for process in (server,):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    output = (root / "generate.log").read_text()
    assert "trunk adapter loaded from" in (root / "server2.log").read_text()

    settings = build_settings(ClientSettings, config)
    model, tokenizer = load_model(settings.model)
    split = split_model(model, settings.partition.partition())
    for part, directory in ((split.head, root / "out" / "alice" / "head"),
                            (split.tail, root / "out" / "alice" / "tail"),
                            (split.trunk, root / "out" / "server" / "trunk")):
        init_adapter(part, settings.adapter, settings.seed)
        load_adapter_state(part, read_adapter(directory)[1])
    encoded = tokenizer(["hello"], return_tensors="pt")
    expected = model.generate(**encoded, max_new_tokens=8, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(expected[0, encoded.input_ids.shape[1]:], skip_special_tokens=True)
    assert text.strip() and text.strip() in output, (text, output)
    looked_up = (root / "lookup.log").read_text()
    assert text.strip() in looked_up and "draft tokens accepted" in looked_up, looked_up[-2000:]
