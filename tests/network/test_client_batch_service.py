"""Client-batch mode over the network: three clients' concurrent forwards run as one batch and one
step, equal to a centralized step on their concatenated batch; a late client is dropped cleanly."""

from __future__ import annotations

import threading

import pytest
import torch

from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.models import adapter_state, load_model
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server import LocalTrunk
from splitfed.server.batcher import Batcher
from splitfed.server.client_batch import BatchedTrunk
from splitfed.server.modes import ClientBatchMode
from splitfed.server.trunk_service import TrunkService
from splitfed.training.loss import causal_lm_loss
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve
from tests.server.test_client_batch import (
    OPTIMIZER,
    _centralized_trunk_after_step,
    _client_batches,
    _concatenate,
    _labelled,
    randomized_split,
)


def _serve(base, names, deadline_s: float):
    identity = Identity.generate("server")
    people = {n: Identity.generate(n) for n in names}
    split = randomized_split(base)
    initial = [adapter_state(p) for p in split.parts.values()]
    batcher = Batcher(BatchedTrunk(split.trunk, OPTIMIZER), window_s=10.0, max_rows=6,
                      backward_deadline_s=deadline_s)
    service = TrunkService(ClientBatchMode(LocalTrunk(split.trunk, OPTIMIZER), batcher),
                           ServerHandshake(identity, AllowList([p.public for p in people.values()])))
    server, port = serve(service, "127.0.0.1:0", allow_insecure_loopback=True)
    remotes = {}
    for name, person in people.items():
        remote = RemoteTrunk(TrunkConnection(f"127.0.0.1:{port}", allow_insecure_loopback=True, timeout_s=60),
                             person, identity.public)
        remote.connect((1, 3), 64)
        remotes[name] = remote
    return server, service, split, initial, remotes


def _client_step(split, remote, name, batch, results, send_backward=True):
    hidden_in = split.head(batch["input_ids"], batch["attention_mask"])
    out = remote.forward(name, hidden_in.detach(), batch["attention_mask"], train=True,
                         labelled_tokens=_labelled(batch["labels"]))
    if not send_backward:
        results[name] = "no backward"
        return
    hidden = out.requires_grad_(True)
    causal_lm_loss(split.tail(hidden, batch["attention_mask"]), batch["labels"]).backward()
    results[name] = remote.backward(name, hidden.grad)


def _run(remotes, split, batches, skip=()):
    results: dict = {}
    threads = [threading.Thread(target=_client_step, args=(split, remotes[n], n, b, results, n not in skip))
               for n, b in batches.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_one_batched_step_over_the_network_equals_a_centralized_step():
    base, _ = load_model("tiny-llama")
    batches = _client_batches()
    server, service, split, initial, remotes = _serve(base, list(batches), deadline_s=30)
    try:
        results = _run(remotes, split, batches)
    finally:
        server.stop(0)
    assert set(results) == set(batches) and service.steps == 1
    central = _centralized_trunk_after_step(base, initial, _concatenate(batches))
    for key, value in adapter_state(split.trunk).items():
        assert (value - central[key]).abs().max().item() <= 1e-5, key


def test_a_client_that_misses_the_backward_deadline_is_dropped():
    base, _ = load_model("tiny-llama")
    batches = _client_batches()
    server, service, split, initial, remotes = _serve(base, list(batches), deadline_s=1.0)
    try:
        results = _run(remotes, split, batches, skip={"c"})
        with pytest.raises(RemoteError) as caught:
            remotes["c"].backward("c", torch.zeros(1, 6, 64))
    finally:
        server.stop(0)
    assert caught.value.status == "FAILED_PRECONDITION"
    assert results["c"] == "no backward" and service.steps == 1
    others = {k: v for k, v in batches.items() if k != "c"}
    central = _centralized_trunk_after_step(base, initial, _concatenate(others))
    for key, value in adapter_state(split.trunk).items():
        assert (value - central[key]).abs().max().item() <= 1e-5, key
