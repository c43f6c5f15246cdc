"""Sub-servers as Ray actors: ``splitfed serve --mode hierarchical --backend ray``.

Each actor holds its own trunk adapter and optimizer on its own Ray resources (``num_cpus``,
``num_gpus``, fractions allowed) and runs an ``InProcessSubServer`` inside; actors may live on any node of
the Ray cluster. The frozen base is the front end's, put once into Ray's object store: the actors of a
node map that one read-only copy (``with_shared_base``), and tensors cross as numpy arrays
(``ray_tensors``). The gRPC front end keeps the sessions, the crypto and the turns, and calls its actors
through ``RaySubServer``, which follows the ``SubServer`` protocol, so hierarchical mode averages
adapters across actors exactly as across threads.

Recovery: after every ``snapshot_every`` training steps the front end copies the actor's adapter,
optimizer state and step count to itself. When an actor dies, the next call starts a new actor,
restores that snapshot and answers ``UNAVAILABLE``; the client then reconnects and repeats its
interrupted step (``splitfed.client.link``), so a completed step is never lost (with the default
``snapshot_every: 1``) and the other sub-servers go on.

Trust: Ray moves tensors between the front end and its actors with its own serialization (pickle), so
the Ray cluster must be the server operator's own machines, as the trunk itself is; nothing a client
sends reaches an actor except tensors already decoded and validated by the front end. Ray's own
transport is not encrypted unless the cluster is started with TLS (``RAY_USE_TLS``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from splitfed.colocation import SPIN_COUNT
from splitfed.endpoints import MicroBatch
from splitfed.models import (
    LoraSpec,
    Partition,
    PrefixSpec,
    TrunkPart,
    adapter_state,
    init_adapter,
    load_adapter_state,
)
from splitfed.models.party import load_parts
from splitfed.models.placement import DTYPES, place_trunk
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.ray_tensors import frozen_arrays, register_tensor_serializer, share_frozen
from splitfed.server.scheduler import TurnScheduler, roster_slices
from splitfed.server.sub_server import InProcessSubServer
from splitfed.training.optim import OptimizerSettings
from splitfed.training.replicate import replicate_frozen
from splitfed.transport.errors import ServiceError

if TYPE_CHECKING:
    from splitfed.models import SplitModel
    from splitfed.server.settings import ServerSettings

log = logging.getLogger(__name__)

ACTOR_CONCURRENCY = 8  # decode steps of several clients meet in one batched call inside the actor


class RayBackendError(RuntimeError):
    """Ray is not installed, unreachable, or an actor cannot be built as asked."""


def import_ray() -> Any:
    """The ``ray`` module, or a clear error naming the optional extra."""
    try:
        import ray
    except ImportError:
        raise RayBackendError("backend 'ray' needs Ray: pip install 'splitfed[ray]'") from None
    return ray


def frozen_fingerprint(part: TrunkPart) -> float:
    """A checksum of a part's frozen weights: an actor refuses to serve a base other than the server's."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in part.parameters() if not p.requires_grad))


@dataclass(frozen=True)
class TrunkRecipe:
    """What an actor needs to build the trunk the front end built: the same model, blocks, adapter
    and starting weights."""

    model: str
    partition: Partition
    adapter: LoraSpec | PrefixSpec | None
    seed: int
    optimizer: OptimizerSettings
    initial_adapter: dict[str, torch.Tensor]
    fingerprint: float
    threads: int = 1
    dtype: str = "float32"  # of the frozen base (settings.dtype)
    on_gpu: bool = False  # the actor holds a GPU (ray.num_gpus > 0): its trunk computes there
    frozen: Any = None  # Ray reference to the front end's frozen weights (``with_shared_base``), or None

    @classmethod
    def of(cls, model: str, part: TrunkPart, partition: Partition, adapter: LoraSpec | PrefixSpec | None,
           seed: int, optimizer: OptimizerSettings, threads: int = 1, dtype: str = "float32",
           on_gpu: bool = False) -> TrunkRecipe:
        return cls(model, partition, adapter, seed, optimizer, adapter_state(part), frozen_fingerprint(part),
                   threads, dtype, on_gpu)


class TrunkActor:
    """The body of one Ray actor: an in-process sub-server over its own copy of the trunk."""

    def __init__(self, recipe: TrunkRecipe) -> None:
        register_tensor_serializer(import_ray())  # what it returns travels as numpy arrays
        torch.set_num_threads(max(1, recipe.threads))
        part = load_parts(recipe.model, recipe.partition, ("trunk",), DTYPES[recipe.dtype],
                          tokenizer=False).split.trunk
        init_adapter(part, recipe.adapter, recipe.seed)
        load_adapter_state(part, recipe.initial_adapter)
        if recipe.frozen is not None:  # the front end's weights, one copy per node; the node's own
            try:                       # model gives only the architecture
                share_frozen(part, import_ray().get(recipe.frozen))
            except ValueError as error:
                raise RayBackendError(f"this node's {recipe.model!r} is not the server's: {error}") from None
        elif abs(frozen_fingerprint(part) - recipe.fingerprint) > 1e-6 * max(1.0, abs(recipe.fingerprint)):
            raise RayBackendError(f"this node's {recipe.model!r} differs from the server's: its frozen trunk "
                                  "weights do not match")
        if recipe.on_gpu:
            if not torch.cuda.is_available():
                raise RayBackendError("this actor was given ray.num_gpus but sees no CUDA device "
                                      f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
            place_trunk(part, ["cuda:0"])  # Ray shows the actor only its own GPU(s), from cuda:0
        self.sub = InProcessSubServer(LocalTrunk(part, recipe.optimizer), TurnScheduler())

    def forward(self, client: str, hidden: torch.Tensor, mask: torch.Tensor | None,
                train: bool, blocks: tuple[int, int] | None = None,
                micro: MicroBatch | None = None) -> torch.Tensor:
        return self.sub.forward(client, hidden, mask, train, blocks, micro).cpu()  # as the wire carries it

    def backward(self, client: str, grad: torch.Tensor, snapshot: bool, micro: MicroBatch | None = None
                 ) -> tuple[torch.Tensor, tuple[dict[str, torch.Tensor], dict[str, Any]] | None]:
        grad_in = self.sub.backward(client, grad, micro)
        return grad_in, (self.sub.checkpoint("snapshot") if snapshot else None)

    def drop(self, client: str) -> None:
        self.sub.drop(client)

    def steps(self) -> int:
        return self.sub.steps

    def adapter(self) -> dict[str, torch.Tensor]:
        return self.sub.adapter()

    def load_adapter(self, state: dict[str, torch.Tensor]) -> None:
        self.sub.load_adapter(state)

    def checkpoint(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.sub.checkpoint(prefix)

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> None:
        self.sub.restore(tensors, meta, prefix)

    def start_generation(self, budget_bytes: int, ttl_s: float, streams: int) -> None:
        self.sub.start_generation(budget_bytes, ttl_s, streams)

    def generate(self, method: str, *args: Any) -> Any:
        """A call on the actor's generation caches (``step``, ``release``, ``expire``, ``streams``,
        ``bytes_in_use``, ``accounted_peak``)."""
        caches = self.sub.generation
        assert caches is not None
        value = getattr(caches, method)
        result = value(*args) if callable(value) else value
        if method == "step":  # (hidden, past length): the hidden state back as the wire carries it
            hidden, past = result
            return hidden.cpu(), past
        return result

    def close(self) -> None:
        self.sub.close()


def raised_cause(error: BaseException) -> BaseException:
    """The exception an actor raised, as it was raised there (Ray wraps it in ``RayTaskError``)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


class RayGeneration:
    """The generation caches of an actor, as the mode and the service use them."""

    def __init__(self, sub: RaySubServer) -> None:
        self._sub = sub

    def step(self, owner: str, stream_id: int, hidden: torch.Tensor, mask: torch.Tensor, past_length: int,
             use_cache: bool = True, blocks: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
        return self._sub.call("generate", "step", owner, stream_id, hidden, mask, past_length, use_cache,
                              blocks)

    def release(self, owner: str, stream: int | None = None) -> int:
        return self._sub.call("generate", "release", owner, stream)

    def expire(self, now: float | None = None) -> int:
        return self._sub.call("generate", "expire", None)  # the actor's own clock

    def streams(self) -> list[tuple[str, int]]:
        return self._sub.call("generate", "streams")

    @property
    def bytes_in_use(self) -> int:
        return self._sub.call("generate", "bytes_in_use")

    @property
    def accounted_peak(self) -> int:
        return self._sub.call("generate", "accounted_peak")


@dataclass
class RaySubServer:
    """A sub-server whose trunk lives in a Ray actor; follows ``SubServer``.

    ``local`` is the front end's own copy of the trunk part (configuration, the adapter saved at the end);
    ``part`` brings the actor's adapter into it first.
    """

    recipe: TrunkRecipe
    local: TrunkPart
    scheduler: TurnScheduler
    name: str = "trunk-0"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    snapshot_every: int = 1
    colocated: bool = False  # the actors share this machine's cores with the front end (a local Ray)
    timeout_s: float = 600.0
    steps_since: int = 0
    samples_since: int = 0
    sessions: int = 0
    generation: RayGeneration | None = None
    restarts: int = 0
    _snapshot: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = field(default=None, repr=False)
    _generation_args: tuple[int, float, int] | None = field(default=None, repr=False)
    _steps_done: int = 0
    _stale_local: bool = False

    def __post_init__(self) -> None:
        self._ray = import_ray()
        self._actor = self._spawn()

    def _spawn(self) -> Any:
        remote = self._ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                  max_concurrency=ACTOR_CONCURRENCY)(TrunkActor)
        # actors next to other training processes spin-wait briefly, as colocated clients do
        environment = {"GOMP_SPINCOUNT": str(SPIN_COUNT)} if self.colocated else {}
        actor = remote.options(runtime_env={"env_vars": environment}).remote(self.recipe)
        try:
            self._ray.get(actor.steps.remote(), timeout=self.timeout_s)  # built, or its error now
        except self._ray.exceptions.RayError as error:
            raise RayBackendError(f"sub-server {self.name} could not start on Ray: "
                                  f"{raised_cause(error)}") from None
        return actor

    # -- calls -------------------------------------------------------------------------------------
    def call(self, method: str, *args: Any) -> Any:
        """``method`` on the actor; an actor that died is replaced and ``UNAVAILABLE`` raised."""
        try:
            return self._ray.get(getattr(self._actor, method).remote(*args), timeout=self.timeout_s)
        except self._ray.exceptions.RayTaskError as error:
            raise raised_cause(error) from None
        except (self._ray.exceptions.RayActorError, self._ray.exceptions.ObjectLostError):
            self._recover()
            raise ServiceError("UNAVAILABLE", "sub_server_restarted",
                               f"sub-server {self.name} was lost and restarted from its last snapshot; "
                               "repeat the step") from None

    def _recover(self) -> None:
        log.warning("Ray actor of sub-server %s died; starting a new one from its last snapshot", self.name)
        self.restarts += 1
        self._actor = self._spawn()
        if self._snapshot is not None:
            tensors, meta = self._snapshot
            self._ray.get(self._actor.restore.remote(tensors, meta, "snapshot"), timeout=self.timeout_s)
        if self._generation_args is not None:
            self._ray.get(self._actor.start_generation.remote(*self._generation_args), timeout=self.timeout_s)

    # -- SubServer ---------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return int(self.call("steps"))

    @property
    def part(self) -> TrunkPart:
        if self._stale_local:
            load_adapter_state(self.local, self.adapter())
            self._stale_local = False
        return self.local

    def forward(self, client: str, hidden: torch.Tensor, mask: torch.Tensor | None,
                train: bool, blocks: tuple[int, int] | None = None,
                micro: MicroBatch | None = None) -> torch.Tensor:
        return self.call("forward", client, hidden, mask, train, blocks, micro)

    def backward(self, client: str, grad: torch.Tensor, micro: MicroBatch | None = None) -> torch.Tensor:
        self._steps_done += 1  # a snapshot between micro-batches holds the adapter before the step
        snapshot = self._steps_done % self.snapshot_every == 0
        grad_in, state = self.call("backward", client, grad, snapshot, micro)
        if state is not None:
            self._snapshot = state
        self._stale_local = True
        return grad_in

    def drop(self, client: str) -> None:
        self.call("drop", client)

    def adapter(self) -> dict[str, torch.Tensor]:
        return self.call("adapter")

    def load_adapter(self, state: dict[str, torch.Tensor]) -> None:
        self.call("load_adapter", state)
        self._stale_local = True

    def checkpoint(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.call("checkpoint", prefix)

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> None:
        self.call("restore", tensors, meta, prefix)
        self._snapshot = self.call("checkpoint", "snapshot")
        self._stale_local = True

    def start_generation(self, budget_bytes: int, ttl_s: float, streams: int) -> None:
        self._generation_args = (budget_bytes, ttl_s, streams)
        self.call("start_generation", budget_bytes, ttl_s, streams)
        self.generation = RayGeneration(self)

    def close(self) -> None:
        try:
            self.call("close")
        except (ServiceError, RuntimeError) as error:
            log.debug("closing sub-server %s: %s", self.name, error)
        self._ray.kill(self._actor)

    def kill_actor(self) -> None:
        """Kill the actor (as a lost node would); the next call recovers. For tests and drills."""
        self._ray.kill(self._actor, no_restart=True)


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine runs), or start a local one."""
    ray = import_ray()
    register_tensor_serializer(ray)
    if ray.is_initialized():
        return
    if address is None:
        # Ray runs its workers at niceness 15, as background tasks; these actors are the server's main
        # work and share the cores with the front end and co-located clients at normal priority.
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayBackendError(f"cannot reach the Ray cluster at ray.address={address!r}: {error}") from None


def check_gpus(num_gpus: float, actors: int) -> None:
    """Refuse ``ray.num_gpus`` the cluster cannot give ``actors`` actors (they would wait for ever)."""
    if num_gpus <= 0:
        return
    ray = import_ray()
    total = float(ray.cluster_resources().get("GPU", 0.0))
    if num_gpus * actors > total + 1e-9:
        raise RayBackendError(f"ray.num_gpus={num_gpus:g} for {actors} sub-server actor(s) needs "
                              f"{num_gpus * actors:g} GPUs; the Ray cluster has {total:g}")


def with_shared_base(recipe: TrunkRecipe, part: TrunkPart) -> TrunkRecipe:
    """``recipe`` with ``part``'s frozen weights put once into Ray's object store: the actors of a node
    map that one copy instead of each holding its own (memory, and the cache traffic of two copies:
    two actors computing at once on 2 cores ran at 0.81-0.86 of two in-process threads with a copy
    each)."""
    return dataclasses.replace(recipe, frozen=import_ray().put(frozen_arrays(part)))


def ray_sub_servers(recipe: TrunkRecipe, local: TrunkPart, rosters: list[list[str] | None],
                    num_cpus: float, num_gpus: float, snapshot_every: int,
                    colocated: bool = False) -> list[RaySubServer]:
    """One actor-backed sub-server per roster slice (``rosters[k]``: the clients of sub-server k), all
    over the front end's frozen base."""
    recipe = with_shared_base(recipe, local)
    return [RaySubServer(recipe, local if k == 0 else _copy_part(local), TurnScheduler(rosters[k]),
                         f"trunk-{k}", num_cpus, num_gpus, snapshot_every, colocated)
            for k in range(len(rosters))]


def _copy_part(part: TrunkPart) -> TrunkPart:
    return replicate_frozen(part)


def sub_servers_from_settings(settings: ServerSettings, split: SplitModel) -> list[RaySubServer]:
    """The ``ray`` entry of ``SUB_SERVER_BACKENDS``: join or start Ray, one actor per sub-server."""
    ray = settings.ray
    connect_ray(ray.address, ray.local_cpus)
    check_gpus(ray.num_gpus, settings.sub_servers)
    recipe = TrunkRecipe.of(settings.model, split.trunk, settings.partition.partition(), settings.adapter,
                            settings.seed, settings.optimizer, threads=max(1, int(ray.num_cpus)),
                            dtype=settings.dtype, on_gpu=ray.num_gpus > 0)
    log.info("Ray: %d actor sub-servers, %g CPU and %g GPU each", settings.sub_servers, ray.num_cpus,
             ray.num_gpus)
    return ray_sub_servers(recipe, split.trunk, roster_slices(settings.roster, settings.sub_servers),
                           ray.num_cpus, ray.num_gpus, ray.snapshot_every, colocated=ray.address is None)
