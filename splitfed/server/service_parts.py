"""The state the trunk service keeps: its limits and its clients' sessions."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from splitfed.endpoints import MicroBatch
from splitfed.security import SecureChannel
from splitfed.server.fair_use import FairUseLimits
from splitfed.server.sub_server import SubServer
from splitfed.transport import WIRE_CODECS, WireFormatError
from splitfed.transport.errors import ServiceError


def shutting_down() -> ServiceError:
    """The refusal of new work while the server drains."""
    return ServiceError("UNAVAILABLE", "shutting_down",
                        "the server is checkpointing and stopping; retry after it is back")


@dataclass(frozen=True)
class ServiceLimits:
    """What one session may send, and how long anything may wait."""

    max_batch: int = 64
    max_length: int = 2048
    max_message_bytes: int = 512 * 1024 * 1024
    dtypes: tuple[str, ...] = WIRE_CODECS  # the wire codecs accepted, either direction
    turn_timeout_s: float = 120.0
    step_timeout_s: float = 60.0
    session_ttl_s: float = 600.0
    generation_budget_bytes: int = 1 << 30
    generation_ttl_s: float = 300.0
    generation_streams: int = 8
    requests_in_flight: int = 4  # per client, at once
    requests_per_s: float = 200.0  # per client, sustained (token bucket)
    request_burst: int = 400
    first_block_max: int = 0  # a range of client partitions: the last block a client's trunk may start at
    end_block_min: int = 0  # ... and the first it may end at (0 and 0: the trunk's own, one partition)
    step_deadline_floor_s: float = 5.0  # a backward's deadline: at least this, at most step_timeout_s
    step_deadline_factor: float = 10.0  # ... else this times the measured forward->backward interval
    held_steps_suspend: int = 4  # held steps (no backward by the deadline) within the window that suspend
    held_steps_window_s: float = 600.0
    suspension_s: float = 900.0
    round_straggler_s: float = 5.0  # secure rounds: how long a phase waits for absent clients (secure_rounds)

    @property
    def fair_use(self) -> FairUseLimits:
        """The step deadlines and held-step bounds (``splitfed.server.fair_use``)."""
        return FairUseLimits(floor_s=self.step_deadline_floor_s, factor=self.step_deadline_factor,
                             cap_s=self.step_timeout_s, suspend_after=self.held_steps_suspend,
                             window_s=self.held_steps_window_s, suspension_s=self.suspension_s)


@dataclass
class MicroSteps:
    """A training step sent in micro-batches, as the server follows it: forwards in order, at most
    ``max_batch`` rows together, and the forward step and output shape each backward must answer."""

    count: int
    forwards: int = 0
    backwards: int = 0
    rows: int = 0
    open: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # step -> (index, shape)

    def check_next(self, micro: MicroBatch, rows: int, max_batch: int) -> None:
        """Refuse a forward that is not this step's next micro-batch or overfills the batch."""
        if micro.count != self.count:
            raise WireFormatError("bad_micro_batch", f"this step has {self.count} micro-batches, not "
                                  f"{micro.count}")
        if micro.index != self.forwards:
            raise WireFormatError("bad_micro_batch", f"micro-batches go in order: expected micro-batch "
                                  f"{self.forwards}, got {micro.index}")
        if self.rows + rows > max_batch:
            raise WireFormatError("too_large", f"the step's micro-batches hold {self.rows + rows} rows "
                                  f"together, above max_batch {max_batch}")

    def opened(self, step: int, index: int, rows: int, shape: tuple[int, ...]) -> None:
        self.forwards += 1
        self.rows += rows
        self.open[step] = (index, shape)


def requested_micro_batch(request: Any, mode: str, limit: int) -> MicroBatch | None:
    """A ``ForwardRequest``'s micro-batch of its step, or None for a step in one forward; refused where
    ``mode`` takes at most ``limit`` (0: none) or the numbers make no sense."""
    count, index = int(request.micro_batches), int(request.micro_batch)
    if count <= 1:
        if index:
            raise WireFormatError("bad_micro_batch", "micro_batch is set but micro_batches is not > 1")
        return None
    if not request.train:
        raise WireFormatError("bad_micro_batch", "micro-batches are for training forwards only")
    if count > limit:
        accepted = f"at most {limit} micro-batches" if limit else "a step in one forward only"
        raise WireFormatError("micro_batches_refused",
                              f"this server's {mode} mode takes {accepted}, not {count}")
    if index >= count:
        raise WireFormatError("bad_micro_batch", f"micro-batch {index} of {count}")
    return MicroBatch(index, count)


@dataclass
class Session:
    """One client's authenticated session: its channel, sub-server and open step."""

    name: str
    channel: SecureChannel
    sub: SubServer | None = None
    last_seen: float = field(default_factory=time.monotonic)
    open_step: int | None = None
    step_started: float = 0.0
    output_shape: tuple[int, ...] = ()
    micro: MicroSteps | None = None  # the open step's micro-batches, when it is sent in several
    lock: threading.Lock = field(default_factory=threading.Lock)
    scoring: threading.Lock = field(default_factory=threading.Lock)  # one inference forward computing
    blocks: tuple[int, int] | None = None  # the trunk blocks this client's partition leaves to the server
    blocks_claimed: bool = False  # set by its first forward or generate request; fixed from then on

    @property
    def key(self) -> str:
        return self.channel.session_id.hex()
