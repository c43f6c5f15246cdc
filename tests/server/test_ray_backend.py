"""Hierarchical sub-servers as Ray actors (a local Ray instance, 2 CPUs): the same adapters as the
in-process threads, and a killed actor is recovered without losing a completed step."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.models import LoraSpec, Partition, adapter_state, init_adapter, split_model
from splitfed.server import LocalTrunk
from splitfed.server.modes import HierarchicalMode
from splitfed.server.ray_backend import (
    RayBackendError,
    TrunkActor,
    TrunkRecipe,
    ray_sub_servers,
    with_shared_base,
)
from splitfed.server.scheduler import roster_slices
from splitfed.server.service_parts import Session
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate, replicate_frozen
from splitfed.transport.errors import ServiceError
from tests.conftest import make_batch

SPEC = LoraSpec(r=4, alpha=8)
OPTIMIZER = OptimizerSettings(lr=1e-2)
ROSTER = ["a", "b", "c", "d"]  # a, c -> sub-server 0; b, d -> sub-server 1
SIZES = {"a": 2, "b": 3, "c": 1, "d": 2}
STEPS = 3
PARTITION = Partition(1, 1)


@pytest.fixture(scope="module")
def base(tiny_llama):
    return tiny_llama


def _trunk(base):
    split = split_model(replicate(base), PARTITION)
    init_adapter(split.trunk, SPEC, 1)
    return split.trunk


def _clients(base):
    clients = {}
    for name in ROSTER:
        split = split_model(replicate(base), PARTITION)
        init_adapter(split.head, SPEC, 1)
        init_adapter(split.tail, SPEC, 1)
        batches = [make_batch(batch=SIZES[name], length=6 + i, seed=10 * i + ord(name)) for i in range(STEPS)]
        clients[name] = (split, batches)
    return clients


class ModeTrunk:
    """A client's view of a mode, in process: forward and backward through the mode's session."""

    def __init__(self, mode: HierarchicalMode, name: str) -> None:
        channel = types.SimpleNamespace(session_id=name.encode())
        self.mode, self.session = mode, Session(name, channel)  # type: ignore[arg-type]
        mode.join(self.session)
        mode.joined(self.session)
        self.step = 0

    def forward(self, client_id, hidden, attention_mask, train=True, labelled_tokens=0):
        self.step += 1
        return self.mode.forward(self.session, self.step, hidden, attention_mask, train, labelled_tokens)

    def backward(self, client_id, grad_output):
        return self.mode.backward(self.session, grad_output)


def _train(mode: HierarchicalMode, base, kill_at: tuple[int, str] | None = None) -> dict:
    """Every client takes STEPS steps, round-robin; ``kill_at`` = (step, client): kill that client's
    actor just before its step, then repeat the step as a reconnecting client does."""
    from splitfed.server.modes.base import StepBook
    from splitfed.server.service_parts import ServiceLimits

    mode.start(StepBook(), ServiceLimits())
    clients = _clients(base)
    runners = {name: SplitClient(name, clients[name][0].head, clients[name][0].tail, ModeTrunk(mode, name),
                                 OPTIMIZER) for name in ROSTER}
    refused = 0
    for step in range(STEPS):
        for name in ROSTER:
            batch = clients[name][1][step]
            if kill_at == (step, name):
                mode.subs[ROSTER.index(name) % 2].kill_actor()
                with pytest.raises(ServiceError) as error:
                    runners[name].train_step(batch)
                assert error.value.status == "UNAVAILABLE" and error.value.code == "sub_server_restarted"
                refused += 1
            runners[name].train_step(batch)
    mode.finish()
    return {"trunk": adapter_state(mode.part), "refused": refused,
            "heads": {name: adapter_state(clients[name][0].head) for name in ROSTER}}


def _ray_mode(base) -> HierarchicalMode:
    trunk = _trunk(base)
    recipe = TrunkRecipe.of("tiny-llama", trunk, PARTITION, SPEC, 1, OPTIMIZER)
    subs = ray_sub_servers(recipe, trunk, roster_slices(ROSTER, 2), num_cpus=1, num_gpus=0, snapshot_every=1)
    return HierarchicalMode(subs, average_every=2, roster=ROSTER)


@pytest.fixture(scope="module")
def threads_result(base):
    """The in-process reference: two sub-servers on threads over one frozen base."""
    trunk = _trunk(base)
    threads = HierarchicalMode([LocalTrunk(trunk, OPTIMIZER), LocalTrunk(replicate_frozen(trunk), OPTIMIZER)],
                               average_every=2, roster=ROSTER)
    result = _train(threads, base)
    result["averages"] = threads.averages
    threads.close()
    return result


def _assert_same_trunk(got: dict, expected: dict) -> None:
    for key, value in expected["trunk"].items():
        assert (got["trunk"][key] - value).abs().max().item() <= 1e-5, key


@pytest.fixture(scope="module")
def ray_mode(local_ray, base):
    """Two actor sub-servers, shared by the tests (each starts from ``start``: the untrained state)."""
    mode = _ray_mode(base)
    start = mode.checkpoint()
    yield mode, start
    mode.close()


def test_ray_actors_end_with_the_adapters_of_the_in_process_threads(ray_mode, base, threads_result):
    mode, start = ray_mode
    mode.restore(*start)
    got = _train(mode, base)
    assert mode.averages == threads_result["averages"] > 0
    moved = max((threads_result["trunk"][k] - v).abs().max().item()
                for k, v in adapter_state(_trunk(base)).items())
    assert moved > 1e-3  # training changed the trunk adapter
    _assert_same_trunk(got, threads_result)
    for name in ROSTER:
        for key, value in threads_result["heads"][name].items():
            assert torch.allclose(got["heads"][name][key], value, atol=1e-5), (name, key)


def test_a_killed_actor_restarts_from_its_snapshot_and_loses_no_completed_step(ray_mode, base,
                                                                                threads_result):
    mode, start = ray_mode
    mode.restore(*start)
    restarts = [sub.restarts for sub in mode.subs]
    got = _train(mode, base, kill_at=(1, "c"))  # sub-server 0 dies after a, c's step 0 and a's step 1
    assert got["refused"] == 1
    assert [sub.restarts - before for sub, before in zip(mode.subs, restarts, strict=True)] == [1, 0]
    _assert_same_trunk(got, threads_result)  # as if it had never died


def test_bad_ray_settings_are_refused_before_anything_loads(base):
    from pydantic import ValidationError

    from splitfed.server.settings import ServerSettings

    with pytest.raises(ValidationError, match="hierarchical"):
        ServerSettings(identity="k", allowlist="a", backend="ray")
    trunk = _trunk(base)
    other_base = TrunkRecipe.of("tiny-llama", trunk, PARTITION, SPEC, 1, OPTIMIZER)
    other_base = dataclasses.replace(other_base, fingerprint=other_base.fingerprint + 1.0)
    with pytest.raises(RayBackendError, match="differs from the server's"):
        TrunkActor(other_base)  # what an actor on a node with another model does as it starts


def test_gpus_the_cluster_lacks_are_refused_before_an_actor_waits_for_them(local_ray):
    from splitfed.server.ray_backend import check_gpus

    check_gpus(0.0, 4)  # CPU actors ask nothing
    gpus = torch.cuda.device_count()  # the local Ray instance sees this machine's GPUs
    with pytest.raises(RayBackendError, match=r"ray.num_gpus=0.5 for \d+ sub-server actor\(s\) needs "
                                              r"[\d.]+ GPUs; the Ray cluster has"):
        check_gpus(0.5, 2 * gpus + 4)



def test_actors_compute_over_the_front_ends_frozen_base_and_refuse_another_shape(local_ray, base):
    import ray

    from splitfed.server.ray_tensors import frozen_arrays

    trunk = _trunk(base)
    with torch.no_grad():  # the front end's base differs from the model files the actor's node has
        for parameter in trunk.parameters():
            if not parameter.requires_grad:
                parameter.mul_(0.5)
    recipe = with_shared_base(TrunkRecipe.of("tiny-llama", trunk, PARTITION, SPEC, 1, OPTIMIZER), trunk)
    actor = TrunkActor(recipe)  # the body of an actor, here in the driver
    theirs = dict(actor.sub.part.named_parameters())
    for name, parameter in trunk.named_parameters():
        if not parameter.requires_grad:
            assert torch.equal(theirs[name], parameter), name
    actor.close()
    shorter = split_model(replicate(base), Partition(2, 1)).trunk
    init_adapter(shorter, SPEC, 1)
    other = dataclasses.replace(recipe, frozen=ray.put(frozen_arrays(shorter)))
    with pytest.raises(RayBackendError, match="is not the server's: the shared frozen base has other"):
        TrunkActor(other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_actors_on_a_gpu_train_like_the_in_process_threads(local_ray, base, threads_result):
    trunk = _trunk(base)
    recipe = TrunkRecipe.of("tiny-llama", trunk, PARTITION, SPEC, 1, OPTIMIZER, on_gpu=True)
    subs = ray_sub_servers(recipe, trunk, roster_slices(ROSTER, 2), num_cpus=1, num_gpus=0.25,
                           snapshot_every=1)
    mode = HierarchicalMode(subs, average_every=2, roster=ROSTER)
    try:
        got = _train(mode, base)
    finally:
        mode.close()
    for key, value in threads_result["trunk"].items():
        assert (got["trunk"][key] - value).abs().max().item() <= 1e-4, key
