"""A federation simulated on Ray: many clients as actors sharing this machine's (or a cluster's) cores.

For research at scale, as in the papers: ``hosts`` actors each hold a group of clients (one frozen
base per actor, an adapter pair per client) and ``sub_servers`` actors each hold a trunk. The data
splits, the seeds, the client steps and the FedAvg of the heads and tails are those of
``InProcessFederation`` (the clients are built by the same ``build_client``); with one sub-server the
steps run in the same order against one trunk, so the two give the same adapters. With K sub-servers,
client ``i`` trains against sub-server ``i % K``: the K groups step in parallel, each in order, and
after every round the trunk adapters are averaged, weighted by the samples each trained on (the
hierarchical mode's rule).

Trust: Ray moves tensors with its own serialization (pickle), so everything here runs on the
operator's own machines; this is a simulation, not a deployment (that is ``splitfed serve`` and
``splitfed train``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitfed.aggregation.fedavg import weighted_average
from splitfed.federation.config import FederationSettings
from splitfed.federation.inprocess import StepCallback, build_client
from splitfed.layout import Layout
from splitfed.models import (
    SplitModel,
    init_adapter,
    load_adapter_state,
    load_model,
    split_model,
)
from splitfed.models.placement import DTYPES
from splitfed.server.ray_backend import (
    ACTOR_CONCURRENCY,
    RayBackendError,
    TrunkActor,
    TrunkRecipe,
    import_ray,
    raised_cause,
)
from splitfed.server.ray_tensors import register_tensor_serializer
from splitfed.training.data import Batch, shuffled_batches
from splitfed.training.replicate import replicate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostRecipe:
    """What a client host needs to build its clients as the in-process federation builds them."""

    model: str
    dtype: str
    settings: FederationSettings
    shard_sizes: tuple[int, ...]
    threads: int = 1


class ActorTrunk:
    """A sub-server actor as a client's trunk (``forward`` / ``backward``, as ``LocalTrunk``)."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor
        self._ray = import_ray()

    def forward(self, client_id: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                train: bool = True, labelled_tokens: int = 0,
                blocks: tuple[int, int] | None = None) -> torch.Tensor:
        """``labelled_tokens`` matters to a two-part trunk only, which is not simulated."""
        return self._ray.get(self._actor.forward.remote(client_id, hidden, attention_mask, train, blocks))

    def backward(self, client_id: str, grad_output: torch.Tensor) -> torch.Tensor:
        grad_in, _ = self._ray.get(self._actor.backward.remote(client_id, grad_output, False))
        return grad_in


class ClientHost:
    """The body of one Ray actor holding a group of clients: their heads, tails, defenses and data."""

    def __init__(self, recipe: HostRecipe, shards: dict[int, list[Any]],
                 collate: Callable[[list[Any]], Batch], trunks: dict[int, Any],
                 public_text: Batch | None) -> None:
        register_tensor_serializer(import_ray())  # what it sends travels as numpy arrays
        torch.set_num_threads(max(1, recipe.threads))
        model, _ = load_model(recipe.model, dtype=DTYPES[recipe.dtype])
        settings = recipe.settings
        self.clients = {index: build_client(model, index, settings, recipe.shard_sizes,
                                            ActorTrunk(trunks[index]), public_text) for index in shards}
        self.batches = {index: shuffled_batches(shard, settings.batch_size, settings.seed + index, collate)
                        for index, shard in shards.items()}

    def train_step(self, index: int) -> tuple[float, int]:
        """One training step of client ``index``: (loss, examples in its batch)."""
        batch = next(self.batches[index])
        return self.clients[index].train_step(batch), int(batch["input_ids"].shape[0])

    def adapter_states(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        return self.clients[index].adapter_states()

    def load_adapter_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        for client in self.clients.values():
            client.load_adapter_states(states)

    def logits(self, index: int, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.clients[index].logits(input_ids, attention_mask)

    def privacy_reports(self) -> list[dict[str, Any]]:
        return [client.defense.report() for client in self.clients.values() if client.defense is not None]


class RayFederation:
    """``InProcessFederation``'s rounds with the clients and the trunk(s) as Ray actors.

    Connect to Ray first (``splitfed.server.ray_backend.connect_ray``). ``model_name`` is loaded by
    every actor (a name or a local directory they can all read); ``model`` is this process's copy (the
    trunk's initial adapter, the split returned by ``split``)."""

    def __init__(
        self,
        model_name: str,
        model: nn.Module,
        shards: Sequence[Sequence[Any]],
        collate: Callable[[list[Any]], Batch],
        settings: FederationSettings,
        sub_servers: int = 1,
        hosts: int | None = None,
        cpus_per_actor: float | None = None,
        public_text: Batch | None = None,
        dtype: str = "float32",
    ) -> None:
        if len(shards) != settings.clients:
            raise ValueError(f"{settings.clients} clients but {len(shards)} data shards")
        if any(len(shard) == 0 for shard in shards):
            raise ValueError("every client needs at least one example")
        if settings.partition.layout != Layout.THREE_PART:
            raise ValueError("simulation: only the three-part layout (head and tail on the client) is "
                             "simulated")
        if settings.sparse is not None:
            raise ValueError("simulation: sparse trunk fine-tuning is not simulated; leave `sparse` unset")
        if settings.privacy.learned is not None and public_text is None:
            raise ValueError("privacy.learned: the defense warms up on public text; pass public_text")
        if not 1 <= sub_servers <= settings.clients:
            raise ValueError(f"simulation.sub_servers: {sub_servers} must be between 1 and the "
                             f"{settings.clients} clients")
        self._ray = import_ray()
        if not self._ray.is_initialized():
            raise RayBackendError("connect to Ray first (splitfed.server.ray_backend.connect_ray)")
        self.settings = settings
        self.model = model
        self.shard_sizes = [len(shard) for shard in shards]
        partition = settings.partition.partition()
        trunk = split_model(replicate(model), partition).trunk
        init_adapter(trunk, settings.adapter, settings.seed)
        recipe = TrunkRecipe.of(model_name, trunk, partition, settings.adapter, settings.seed,
                                settings.optimizer, dtype=dtype)
        cluster_cpus = float(self._ray.cluster_resources().get("CPU", 1.0))
        hosts = min(settings.clients, hosts or max(1, int(cluster_cpus) - sub_servers))
        # every actor's share fits the cluster at once: none waits for another to finish
        share = cpus_per_actor or min(1.0, cluster_cpus / (sub_servers + hosts))
        trunk_actor = self._ray.remote(num_cpus=share, max_concurrency=ACTOR_CONCURRENCY)(TrunkActor)
        self.trunks = [trunk_actor.remote(recipe) for _ in range(sub_servers)]
        self.sub_server_of = [index % sub_servers for index in range(settings.clients)]
        self.host_of = [index % hosts for index in range(settings.clients)]
        host_actor = self._ray.remote(num_cpus=share,
                                      max_concurrency=max(ACTOR_CONCURRENCY, sub_servers))(ClientHost)
        host_recipe = HostRecipe(model_name, dtype, settings, tuple(self.shard_sizes))
        self.hosts = []
        for host in range(hosts):
            members = [i for i in range(settings.clients) if self.host_of[i] == host]
            self.hosts.append(host_actor.remote(
                host_recipe, {i: list(shards[i]) for i in members}, collate,
                {i: self.trunks[self.sub_server_of[i]] for i in members}, public_text))
        try:  # built, or the first actor's error now
            self._ray.get([t.steps.remote() for t in self.trunks]
                          + [h.privacy_reports.remote() for h in self.hosts])
        except self._ray.exceptions.RayError as error:
            self.close()
            raise RayBackendError(f"the simulation's actors could not start: {raised_cause(error)}") from None
        self.rounds_done = 0
        log.info("simulation on Ray: %d clients on %d host actor(s), %d sub-server actor(s)",
                 settings.clients, hosts, sub_servers)

    def _step(self, index: int) -> tuple[float, int]:
        return self._ray.get(self.hosts[self.host_of[index]].train_step.remote(index))

    def train_round(self, on_step: StepCallback | None = None) -> list[float]:
        """One round: each sub-server's clients take turns, one step each, ``local_steps`` times (the
        groups in parallel); then FedAvg of heads and tails, and of the trunks if there are several."""
        groups = [[i for i in range(self.settings.clients) if self.sub_server_of[i] == sub]
                  for sub in range(len(self.trunks))]
        samples = [0] * len(self.trunks)
        losses: dict[tuple[int, int], float] = {}

        def run(sub: int) -> None:
            for step in range(self.settings.local_steps):
                for index in groups[sub]:
                    loss, rows = self._step(index)
                    losses[step, index] = loss
                    samples[sub] += rows
                    if on_step is not None:
                        on_step(index, loss)

        if len(groups) == 1:
            run(0)
        else:
            with ThreadPoolExecutor(len(groups), thread_name_prefix="sub-server") as pool:
                list(pool.map(run, range(len(groups))))
        self.aggregate(samples)
        self.rounds_done += 1
        ordered = [losses[step, index] for step in range(self.settings.local_steps)
                   for index in range(self.settings.clients)]
        log.info("round %d: mean loss %.4f", self.rounds_done, math.fsum(ordered) / len(ordered))
        return ordered

    def aggregate(self, trunk_samples: Sequence[int] | None = None) -> None:
        """FedAvg of the clients' head and tail adapters, weighted by shard size; with several
        sub-servers, their trunk adapters too, weighted by ``trunk_samples``."""
        states = self._ray.get([self.hosts[self.host_of[i]].adapter_states.remote(i)
                                for i in range(self.settings.clients)])
        averaged = {part: weighted_average([state[part] for state in states], self.shard_sizes)
                    for part in ("head", "tail")}
        self._ray.get([host.load_adapter_states.remote(averaged) for host in self.hosts])
        if len(self.trunks) > 1:
            weights = list(trunk_samples) if trunk_samples is not None else [1] * len(self.trunks)
            trunk = weighted_average(self.trunk_adapters(), weights)
            self._ray.get([actor.load_adapter.remote(trunk) for actor in self.trunks])

    def trunk_adapters(self) -> list[dict[str, torch.Tensor]]:
        """Each sub-server's trunk adapter (all equal after ``aggregate``)."""
        return self._ray.get([actor.adapter.remote() for actor in self.trunks])

    def client_adapters(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        """Client ``index``'s head and tail adapters."""
        return self._ray.get(self.hosts[self.host_of[index]].adapter_states.remote(index))

    def privacy_reports(self) -> list[dict[str, Any]]:
        """Each client's privacy spent so far (empty without a defense)."""
        return [report for reports in self._ray.get([h.privacy_reports.remote() for h in self.hosts])
                for report in reports]

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Inference with the federated model through client 0 and its sub-server (as in process)."""
        return self._ray.get(self.hosts[self.host_of[0]].logits.remote(0, input_ids, attention_mask))

    def split(self) -> SplitModel:
        """The trained model in this process: client 0's head and tail and the (first) trunk adapter."""
        split = split_model(replicate(self.model), self.settings.partition.partition())
        for part in split.parts.values():
            init_adapter(part, self.settings.adapter, self.settings.seed)
        client = self.client_adapters(0)
        load_adapter_state(split.head, client["head"])
        load_adapter_state(split.tail, client["tail"])
        load_adapter_state(split.trunk, self.trunk_adapters()[0])
        return split

    def close(self) -> None:
        """Stop the actors (the Ray instance stays up)."""
        for actor in [*self.trunks, *getattr(self, "hosts", [])]:
            self._ray.kill(actor)


