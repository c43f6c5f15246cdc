"""A client process trains from its exported part alone against a server holding only the trunk; a
client whose part comes from another base model is refused at the handshake, naming why."""

from __future__ import annotations

import torch

from splitfed.models import Partition, load_model
from splitfed.models.part_export import export_part
from tests.network.conftest import splitfed, wait_for_port


def _bases(root):
    """tiny-llama as a Hugging Face directory, and a second base of the same shape with one weight
    changed (a fine-tuned variant, say)."""
    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.01)
    model.save_pretrained(root / "variant")
    tokenizer.save_pretrained(root / "variant")
    return root / "base", root / "variant"


def test_a_client_trains_from_its_part_and_a_part_of_another_base_is_refused(deployment):
    root = deployment.root
    base, variant = _bases(root)
    partition = Partition(1, 1)
    export_part(str(base), "server", partition, "three-part", torch.float32, root / "server-part")
    export_part(str(base), "client", partition, "three-part", torch.float32, root / "alice-part")
    export_part(str(variant), "client", partition, "three-part", torch.float32, root / "bob-part")
    server = splitfed("serve", "--config", str(deployment.server_config()), "--set",
                      f"model={root / 'server-part'}", "--roster", "alice", "--exit-when-done",
                      log=root / "server.log")
    try:
        port = wait_for_port(root / "port", server)
        bob = deployment.client_config("bob", 1, 2, f"fedavg: false\nmodel: {root / 'bob-part'}\n")
        refused = splitfed("train", "--config", str(bob), "--server", f"127.0.0.1:{port}",
                           log=root / "bob.log")
        assert refused.wait(timeout=300) != 0
        alice = deployment.client_config("alice", 0, 3, f"fedavg: false\nmodel: {root / 'alice-part'}\n")
        trainer = splitfed("train", "--config", str(alice), "--server", f"127.0.0.1:{port}",
                           log=root / "alice.log")
        assert trainer.wait(timeout=300) == 0, (root / "alice.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
    finally:
        for process in (server,):
            if process.poll() is None:
                process.kill()
    bob_log = " ".join((root / "bob.log").read_text().split())
    assert "base_mismatch" in bob_log or "another base model" in bob_log, bob_log[-2000:]
    assert "Traceback" not in bob_log
    server_log = (root / "server.log").read_text()
    assert "trunk adapter after 3 steps" in server_log
    assert "loaded blocks [1:3]" in " ".join(server_log.split())
    alice_log = " ".join((root / "alice.log").read_text().split())
    assert "loaded embedding, blocks 0,3, final norm + LM head" in alice_log
