"""The two-part layout over the network: a real server (LM head and loss on it) and a client process
that keeps only the head end with the same adapters as the same run in one process; the server refuses
three-part messages and mismatched clients."""

from __future__ import annotations

from splitfed.client.process import client_rows
from splitfed.client.settings import ClientSettings
from splitfed.config import build_settings
from splitfed.federation import FederationSettings, InProcessFederation
from splitfed.models import adapter_state, load_model
from splitfed.models.adapters import read_adapter
from splitfed.server.modes import TwoPartMode
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
        model, [client_rows(settings, load_client_examples(settings.data, tokenizer))[0]],  # less held-out
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


def test_two_part_generation_and_scoring_over_the_network():
    """In-thread server: greedy generation through head (client) and trunk + LM head (server) equals the
    whole model's ``generate``; scoring returns the in-process loss; three-part messages are refused."""
    import pytest
    import torch

    from splitfed.client.remote_trunk import RemoteTrunk
    from splitfed.inference import SamplingSettings, SplitGenerator
    from splitfed.inference.server_logits import ServerLogits
    from splitfed.models import LoraSpec, Partition, add_adapter, split_model
    from splitfed.security import AllowList, Identity, ServerHandshake
    from splitfed.server.trunk_service import ServiceLimits, TrunkService
    from splitfed.server.two_part import TwoPartTrunk
    from splitfed.training.loss import causal_lm_loss
    from splitfed.transport.connection import TrunkConnection
    from splitfed.transport.errors import RemoteError
    from splitfed.transport.server import serve
    from tests.conftest import make_batch

    model, tokenizer = load_model("tiny-llama")
    split = split_model(model, Partition(1, 0))
    for part in split.parts.values():
        add_adapter(part, LoraSpec(r=4))
    with torch.no_grad():
        for name, parameter in split.named_parameters():
            if "lora_B" in name:
                noise = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3))
                parameter.copy_(noise * 0.1)
    server_identity, client = Identity.generate("server"), Identity.generate("alice")
    handshake = ServerHandshake(server_identity, AllowList([client.public]))
    service = TrunkService(TwoPartMode(TwoPartTrunk(split.trunk, split.tail)), handshake,
                           limits=ServiceLimits(generation_budget_bytes=16 << 20))
    server, port = serve(service, "127.0.0.1:0", allow_insecure_loopback=True)
    try:
        remote = RemoteTrunk(TrunkConnection(f"127.0.0.1:{port}", allow_insecure_loopback=True, timeout_s=60),
                             client, server_identity.public)
        remote.connect((1, 4), 64, "two-part")
        prompts = ["The sea is", "A much longer prompt, left padded"]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        generator = SplitGenerator(split.head, ServerLogits(), remote)  # type: ignore[arg-type]
        tokens = list(generator.generate(encoded.input_ids, encoded.attention_mask,
                                         SamplingSettings(max_new_tokens=8), eos_token_id=None,
                                         pad_token_id=0))
        expected = model.generate(**encoded, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
        assert torch.equal(torch.stack(tokens, dim=1), expected[:, encoded.input_ids.shape[1]:])

        batch = make_batch(batch=2, length=9, seed=4)
        hidden = split.head(batch["input_ids"], batch["attention_mask"]).detach()
        scored = remote.loss("alice", hidden, batch["attention_mask"], batch["labels"], train=False)
        with torch.no_grad():
            reference = causal_lm_loss(split(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        assert scored.loss == pytest.approx(reference.item(), abs=1e-5)
        with pytest.raises(RemoteError, match="wrong_layout"):
            remote.forward("alice", hidden, batch["attention_mask"], train=False)
        bad = batch["labels"].clone()
        bad[0, 3] = 10**6
        with pytest.raises(RemoteError, match="bad_labels"):
            remote.loss("alice", hidden, batch["attention_mask"], bad, train=False)
    finally:
        server.stop(grace=None)
