"""What every server mode is to the trunk service, and what most of them share.

The service owns sessions, crypto and the wire; a ``Mode`` owns how training steps meet the trunk: which
sub-server a client is assigned to, turns, batching, averaging, checkpoints. ``StepBook`` is the part of
a step's life the service and the mode share: opening it atomically with draining, and counting it.
``SubServerMode`` is the sequential flow over one or more sub-servers, which the concrete modes refine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from splitfed.endpoints import MICRO_BATCHES_MAX, MicroBatch
from splitfed.layout import Layout
from splitfed.server.scheduler import TurnScheduler, TurnTimeout
from splitfed.server.service_parts import MicroSteps, ServiceLimits, Session, shutting_down
from splitfed.server.sub_server import InProcessSubServer, SubServer
from splitfed.transport import WireFormatError
from splitfed.transport.errors import ServiceError

if TYPE_CHECKING:
    from splitfed.models import SplitModel, TrunkPart
    from splitfed.server.local_trunk import LocalTrunk
    from splitfed.server.settings import ServerSettings

log = logging.getLogger(__name__)

def _server_fault(error: BaseException) -> bool:
    """A step that failed through no fault of the client (its sub-server was lost and restarted)."""
    return isinstance(error, ServiceError) and error.code == "sub_server_restarted"


class StepBook:
    """Training steps: opened atomically with draining (a checkpoint never misses a step that began
    before it), counted when finished, and the hook run after a step (periodic checkpoints)."""

    def __init__(self) -> None:
        self.draining = False
        self.lock = threading.Lock()
        self.progress: dict[str, int] = {}  # completed training steps per client
        self.after_step: Callable[[], None] | None = None
        self.on_finished: Callable[[str, float], None] | None = None  # (client, seconds the step was open)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise shutting_down()

    def open(self, session: Session, step: int) -> None:
        """Mark a training step open before its trunk work starts, or refuse it if the server drains."""
        with self.lock:
            if self.draining:
                raise shutting_down()
            session.open_step = step
            session.step_started = time.monotonic()

    def finished(self, session: Session) -> None:
        """Count a finished step; only then is it closed, so that draining waits for it."""
        with self.lock:
            self.progress[session.name] = self.progress.get(session.name, 0) + 1
            session.open_step = None
            if self.on_finished is not None:
                self.on_finished(session.name, time.monotonic() - session.step_started)


class Mode(Protocol):
    """How a server trains: one implementation per mode, registered in ``splitfed.server.modes.MODES``."""

    name: ClassVar[str]
    layout: ClassVar[Layout]
    micro_batches_max: ClassVar[int]  # 0: a training step is one forward
    scheduler: TurnScheduler  # every client's turn and the roster's progress
    subs: list[SubServer]

    @classmethod
    def from_settings(cls, settings: ServerSettings, split: SplitModel) -> Mode: ...

    def start(self, book: StepBook, limits: ServiceLimits) -> None:
        """Called once by the service before the first session."""
        ...

    def join(self, session: Session) -> None:
        """Assign ``session`` a sub-server (under the service's sessions lock)."""
        ...

    def joined(self, session: Session) -> None:
        """After ``join``, outside the lock: the client takes part in the turns."""
        ...

    def leave(self, session: Session, finished: bool) -> None: ...

    def expire(self, now: float) -> None:
        """Free generation streams idle past their time-to-live."""
        ...

    def forward(self, session: Session, step: int, hidden: torch.Tensor, mask: torch.Tensor,
                train: bool, labelled_tokens: int, micro: MicroBatch | None = None) -> torch.Tensor: ...

    def backward(self, session: Session, grad: torch.Tensor,
                 micro: MicroBatch | None = None) -> torch.Tensor: ...

    def loss(self, session: Session, step: int, hidden: torch.Tensor, mask: torch.Tensor,
             labels: torch.Tensor, train: bool) -> Any: ...

    def generation_output(self, sub: SubServer, output: torch.Tensor) -> torch.Tensor: ...

    def abandon(self, session: Session, reason: str) -> None: ...

    @property
    def steps(self) -> int: ...

    @property
    def averages(self) -> int: ...

    @property
    def trunk(self) -> LocalTrunk: ...

    @property
    def part(self) -> TrunkPart: ...

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


class SubServerMode:
    """Sequential training over sub-servers: a client's step takes its sub-server's turn from forward to
    backward. Subclasses change how steps meet the trunk (batches, the loss on the server) or add to it
    (hierarchical mode's averages between steps)."""

    name: ClassVar[str] = "sequential"
    layout: ClassVar[Layout] = Layout.THREE_PART
    micro_batches_max: ClassVar[int] = MICRO_BATCHES_MAX

    def __init__(self, subs: list[SubServer], scheduler: TurnScheduler,
                 roster: list[str] | None = None) -> None:
        if not subs:
            raise ValueError("a mode needs at least one sub-server")
        self.subs = subs
        self.scheduler = scheduler
        self.roster = roster
        self._arrivals = 0
        self.book = StepBook()
        self.limits = ServiceLimits()

    # -- life --------------------------------------------------------------------------------------
    def start(self, book: StepBook, limits: ServiceLimits) -> None:
        self.book, self.limits = book, limits
        for sub in self.subs:
            sub.start_generation(limits.generation_budget_bytes // len(self.subs), limits.generation_ttl_s,
                                 limits.generation_streams)

    def finish(self) -> None:
        """At the end of serving (hierarchical mode averages its sub-servers once more)."""

    def close(self) -> None:
        for sub in self.subs:
            sub.close()

    # -- clients -----------------------------------------------------------------------------------
    def assign(self, name: str) -> SubServer:
        if len(self.subs) == 1:
            return self.subs[0]
        if self.roster and name in self.roster:
            index = self.roster.index(name)
        else:
            index, self._arrivals = self._arrivals, self._arrivals + 1
        return self.subs[index % len(self.subs)]

    def join(self, session: Session) -> None:
        """Assign ``session`` a sub-server (call under the service's sessions lock)."""
        session.sub = self.assign(session.name)
        session.sub.sessions += 1

    def joined(self, session: Session) -> None:
        """After ``join``, outside the sessions lock: the client takes part in the turns."""
        assert session.sub is not None
        session.sub.scheduler.join(session.name)
        if session.sub.scheduler is not self.scheduler:
            self.scheduler.join(session.name)

    def leave(self, session: Session, finished: bool) -> None:
        assert session.sub is not None
        if session.sub.generation is not None:
            session.sub.generation.release(session.key)
        session.sub.sessions -= 1
        session.sub.scheduler.leave(session.name, finished)
        if session.sub.scheduler is not self.scheduler:
            self.scheduler.leave(session.name, finished)

    def abandon(self, session: Session, reason: str) -> None:
        """Free ``session``'s open step: its autograd graph and its turn."""
        if session.open_step is not None:
            assert session.sub is not None
            session.sub.drop(session.key)
            session.sub.scheduler.release(session.name)
            log.warning("step %d of %s abandoned: %s", session.open_step, session.name, reason)
            session.open_step = None
        session.micro = None

    # -- steps -------------------------------------------------------------------------------------
    def forward(self, session: Session, step: int, hidden: torch.Tensor, mask: torch.Tensor,
                train: bool, labelled_tokens: int, micro: MicroBatch | None = None) -> torch.Tensor:
        sub = session.sub
        assert sub is not None
        if not train:  # one of a client's scoring forwards computing at a time: a flood waits its turn
            with session.scoring:
                return sub.forward(session.key, hidden, mask, train=False, blocks=session.blocks)
        if micro is not None and micro.index > 0:
            return self._next_micro_batch(session, step, hidden, mask, micro)
        self.book.refuse_if_draining()
        if session.open_step is not None:
            raise WireFormatError("step_open", f"step {session.open_step} is still waiting for its backward")
        self._take_turn(session)
        try:
            self.book.refuse_if_draining()  # it waited for its turn while the server began to stop
            self._before_step(sub)  # holding the turn: no step of this sub-server is open
            self.book.open(session, step)
            session.micro = None if micro is None else MicroSteps(micro.count)
            output = sub.forward(session.key, hidden, mask, train=True, blocks=session.blocks, micro=micro)
        except BaseException as error:
            session.open_step, session.micro = None, None
            sub.scheduler.release(session.name, advance=not _server_fault(error))
            raise
        if session.micro is not None:
            session.micro.opened(step, 0, int(hidden.shape[0]), tuple(output.shape))
        return output

    def _next_micro_batch(self, session: Session, step: int, hidden: torch.Tensor, mask: torch.Tensor,
                          micro: MicroBatch) -> torch.Tensor:
        """Micro-batch 1, 2, ... of the open step: the turn is already this client's."""
        sub = session.sub
        assert sub is not None
        if session.open_step is None or session.micro is None:
            raise WireFormatError("no_open_step", f"micro-batch {micro.index} of a step that has not begun: "
                                  "send micro-batch 0 first")
        try:
            session.micro.check_next(micro, int(hidden.shape[0]), self.limits.max_batch)
            output = sub.forward(session.key, hidden, mask, train=True, blocks=session.blocks, micro=micro)
        except BaseException:
            self.abandon(session, f"its micro-batch {micro.index} was refused")
            raise
        session.micro.opened(step, micro.index, int(hidden.shape[0]), tuple(output.shape))
        return output

    def backward(self, session: Session, grad: torch.Tensor, micro: MicroBatch | None = None) -> torch.Tensor:
        sub = session.sub
        assert sub is not None
        try:
            grad_in = sub.backward(session.key, grad, micro=micro)
        except BaseException:
            self.abandon(session, "its backward was refused")
            raise
        rows = int(grad.shape[0])
        if session.micro is not None:
            session.micro.backwards += 1
            if session.micro.backwards < session.micro.count:
                return grad_in  # the step (and the turn) stays open for the other micro-batches
            rows, session.micro = session.micro.rows, None
        self._count(session, rows)
        self._after_step()  # still holding the turn: no other step is open
        sub.scheduler.release(session.name)
        return grad_in

    def loss(self, session: Session, step: int, hidden: torch.Tensor, mask: torch.Tensor,
             labels: torch.Tensor, train: bool) -> Any:
        raise WireFormatError("wrong_layout", "this server runs the three-part layout: it takes "
                              "forward/backward, not 'loss'")

    def generation_output(self, sub: SubServer, output: torch.Tensor) -> torch.Tensor:
        """What a generation step returns: the trunk's output (the two-part layout adds the LM head)."""
        return output

    def _take_turn(self, session: Session) -> None:
        assert session.sub is not None
        try:
            session.sub.scheduler.acquire(session.name, self.limits.turn_timeout_s)
        except TurnTimeout as error:
            raise ServiceError("UNAVAILABLE", "busy", str(error)) from None

    def _before_step(self, sub: SubServer) -> None:
        """Before a training step takes ``sub``'s trunk (hierarchical mode: a due average)."""

    def _count(self, session: Session, samples: int) -> None:
        """Count a finished training step of ``samples`` rows."""
        self.book.finished(session)

    def _after_step(self) -> None:
        if self.book.after_step is not None and len(self.subs) == 1:
            self.book.after_step()

    # -- state -------------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Trunk optimizer steps over all sub-servers."""
        return sum(sub.steps for sub in self.subs)

    @property
    def averages(self) -> int:
        """Averages of the sub-servers' trunk adapters so far (hierarchical mode)."""
        return 0

    @property
    def trunk(self) -> LocalTrunk:
        """The first sub-server's trunk (after ``finish``, every sub-server holds the same adapter)."""
        first = self.subs[0]
        assert isinstance(first, InProcessSubServer)
        return first.trunk

    @property
    def part(self) -> TrunkPart:
        return self.subs[0].part

    def _trainables(self) -> list[Any]:
        """What a checkpoint holds, one entry per index: the sub-servers here."""
        return list(self.subs)

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        subs: dict[str, Any] = {}
        for index, sub in enumerate(self._trainables()):
            sub_tensors, subs[str(index)] = self._save(sub, f"sub{index}")
            tensors.update(sub_tensors)
        return tensors, {"subs": subs, "averages": self.averages}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        trainables = self._trainables()
        subs = meta["subs"]
        if len(subs) != len(trainables):
            raise ValueError(f"the checkpoint has {len(subs)} sub-server(s), this server {len(trainables)}: "
                             "resume with the same mode and sub_servers")
        for index, sub in enumerate(trainables):
            self._load(sub, tensors, subs[str(index)], f"sub{index}")

    @staticmethod
    def _save(sub: Any, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return sub.checkpoint(prefix)

    @staticmethod
    def _load(sub: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> None:
        sub.restore(tensors, meta, prefix)

    def status(self) -> dict[str, Any]:
        caches = [sub.generation for sub in self.subs if sub.generation is not None]
        return {"mode": self.name, "sub_servers": len(self.subs),
                "generation_streams": sum(len(c.streams()) for c in caches),
                "generation_cache_mib": sum(c.bytes_in_use for c in caches) / 2**20,
                # the most the generation budget accounted at once (caches and steps' working memory)
                "generation_accounted_peak_mib": sum(c.accounted_peak for c in caches) / 2**20}

    def expire(self, now: float) -> None:
        """Free generation streams idle past their time-to-live."""
        for sub in self.subs:
            if sub.generation is not None:
                sub.generation.expire(now)
