"""The defense acts on what leaves the client, before encryption, and never on the client's own copies."""

from __future__ import annotations

import copy

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.models import LoraSpec, init_adapter, load_model, split_model
from splitfed.models.split import Partition
from splitfed.privacy import ChannelSettings, PrivacySettings, SplitDefense, clip_per_token
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server import LocalTrunk
from splitfed.server.modes import SequentialMode
from splitfed.server.trunk_service import ServiceLimits, TrunkService
from splitfed.training.loss import causal_lm_loss
from splitfed.training.replicate import replicate
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.server import serve
from tests.conftest import make_batch

FORWARD_CLIP, BACKWARD_CLIP = 0.2, 1e-3
SETTINGS = PrivacySettings(forward=ChannelSettings(clip=FORWARD_CLIP, sigma=0.7),
                           backward=ChannelSettings(clip=BACKWARD_CLIP, sigma=0.4), seed=11)


class RecordingTrunk(LocalTrunk):
    """A LocalTrunk that keeps what it received and what it answered."""

    def __init__(self, trunk) -> None:
        super().__init__(trunk)
        self.received: dict[str, torch.Tensor] = {}

    def forward(self, client_id, hidden, attention_mask, train=True, labelled_tokens=0, blocks=None):
        self.received["hidden"] = hidden.detach().clone()
        output = super().forward(client_id, hidden, attention_mask, train, labelled_tokens, blocks)
        self.received["output"] = output.clone()
        return output

    def backward(self, client_id, grad_output):
        self.received["grad"] = grad_output.detach().clone()
        grad_in = super().backward(client_id, grad_output)
        self.received["grad_in"] = grad_in.clone()
        return grad_in


def _parts(model):
    split = split_model(replicate(model), Partition(1, 1))
    for part in split.parts.values():
        init_adapter(part, LoraSpec(r=4), 0)
    return split


def _expected_noise(shape_forward, shape_backward):
    generator = torch.Generator().manual_seed(SETTINGS.seed)
    forward = torch.randn(shape_forward, generator=generator) * 0.7 * FORWARD_CLIP
    backward = torch.randn(shape_backward, generator=generator) * 0.4 * BACKWARD_CLIP
    return forward, backward


def test_trunk_gets_clipped_noised_copies_while_the_client_computes_on_exact_ones():
    model, _ = load_model("tiny-llama")
    split = _parts(model)
    trunk = RecordingTrunk(split.trunk)
    client = SplitClient("alice", split.head, split.tail, trunk, defense=SplitDefense(SETTINGS))
    client.optimizer = None  # keep the gradients to inspect them
    head_copy, tail_copy = copy.deepcopy(split.head), copy.deepcopy(split.tail)
    batch = make_batch(batch=2, length=9)
    mask = batch["attention_mask"]

    loss = client.train_step(batch)

    clean = head_copy(batch["input_ids"], mask)
    out = trunk.received["output"].requires_grad_(True)
    expected_loss = causal_lm_loss(tail_copy(out, mask), batch["labels"])
    expected_loss.backward()
    noise_f, noise_b = _expected_noise(clean.shape, out.shape)
    # what the trunk received: exactly clip + noise of the client's exact tensors
    sent = clip_per_token(clean.detach(), FORWARD_CLIP) + noise_f
    torch.testing.assert_close(trunk.received["hidden"], sent)
    torch.testing.assert_close(trunk.received["grad"], clip_per_token(out.grad, BACKWARD_CLIP) + noise_b)
    # clipping was active on both channels
    assert clean.norm(dim=-1).max() > FORWARD_CLIP and out.grad.norm(dim=-1).max() > BACKWARD_CLIP
    # the client's loss used the trunk's output as is, and its head backward used its exact hidden state
    assert loss == pytest.approx(float(expected_loss), abs=1e-6)
    head_params = [p for p in head_copy.parameters() if p.requires_grad]
    expected = torch.autograd.grad(clean, head_params, trunk.received["grad_in"])
    got = [p.grad for p in split.head.parameters() if p.requires_grad]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    tail_grads = [p.grad for p in split.tail.parameters() if p.requires_grad]
    for a, b in zip(tail_grads, [p.grad for p in tail_copy.parameters() if p.requires_grad], strict=True):
        torch.testing.assert_close(a, b)
    assert client.defense.steps == 1 and client.defense.accountant.releases == 2


@pytest.fixture(scope="module")
def live_server():
    model, _ = load_model("tiny-llama")
    server_identity = Identity.generate("server")
    alice = Identity.generate("alice")
    trunk = RecordingTrunk(_parts(model).trunk)
    service = TrunkService(SequentialMode(trunk), ServerHandshake(server_identity, AllowList([alice.public])),
                           limits=ServiceLimits(max_batch=8, max_length=64))
    server, port = serve(service, "127.0.0.1:0", allow_insecure_loopback=True)
    yield model, trunk, server_identity, alice, f"127.0.0.1:{port}"
    server.stop(0)


def test_over_the_encrypted_session_the_server_decrypts_only_the_noised_tensors(live_server):
    model, trunk, server_identity, alice, address = live_server
    split = _parts(model)
    head_copy = copy.deepcopy(split.head)
    remote = RemoteTrunk(TrunkConnection(address, allow_insecure_loopback=True, timeout_s=30), alice,
                         server_identity.public)
    remote.connect((1, 3), 64)
    client = SplitClient("alice", split.head, split.tail, remote, defense=SplitDefense(SETTINGS))
    batch = make_batch(batch=2, length=9)
    client.train_step(batch)
    remote.close()
    clean = head_copy(batch["input_ids"], batch["attention_mask"]).detach()
    noise_f, _ = _expected_noise(clean.shape, clean.shape)
    torch.testing.assert_close(trunk.received["hidden"], clip_per_token(clean, FORWARD_CLIP) + noise_f)
    assert trunk.received["grad"].norm(dim=-1).max() > BACKWARD_CLIP  # noised: beyond the clip ball
    assert client.defense.steps == 1


def test_inference_through_the_trunk_is_noised_too_unless_disabled():
    model, _ = load_model("tiny-llama")
    split = _parts(model)
    trunk = RecordingTrunk(split.trunk)
    batch = make_batch(batch=2, length=9)
    for protect in (True, False):
        settings = SETTINGS.model_copy(update={"protect_inference": protect})
        client = SplitClient("alice", split.head, split.tail, trunk, defense=SplitDefense(settings))
        client.logits(batch["input_ids"], batch["attention_mask"])
        clean = split.head(batch["input_ids"], batch["attention_mask"]).detach()
        assert torch.equal(trunk.received["hidden"], clean) is not protect
        assert client.defense.steps == 0  # inference is not a training release


def test_progress_file_carries_the_privacy_spent(tmp_path):
    import json

    from splitfed.client.step_hooks import report_progress

    defense = SplitDefense(SETTINGS)
    defense.record_step(torch.ones(2, 5), 5)
    report_progress(tmp_path, 1, 2.5, defense.report())
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert saved["step"] == 1 and saved["privacy"]["epsilon"] == pytest.approx(defense.epsilon)
    assert saved["privacy"]["forward_sigma"] == 0.7 and saved["privacy"]["unprotected_channels"] == []
