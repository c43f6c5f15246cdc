"""The trunk as a network service, independent of the RPC library: sessions, decryption, validation.

Every request is authenticated and decrypted with its session's keys, parsed, and checked against
the session limits before any tensor is allocated. Anything wrong becomes a ``ServiceError`` with a
precise status; the service and the other sessions are unaffected.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

import torch

from splitfed.protocol import from_wire, to_wire
from splitfed.security import (
    ClientHello,
    DecryptionError,
    HandshakeError,
    ReplayError,
    Sealed,
    SecureChannel,
    SecurityError,
    ServerHandshake,
    UnknownClientError,
)
from splitfed.server.aggregator import AggregationError, RoundAggregator
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.scheduler import TurnScheduler, TurnTimeout
from splitfed.transport import (
    WIRE_DTYPES,
    TensorLimits,
    WireFormatError,
    decode_tensor,
    encode_tensor,
    lengths_to_mask,
    parse_payload,
    pb,
)
from splitfed.transport.errors import ServiceError

log = logging.getLogger(__name__)

MAX_ADAPTER_TENSORS = 10_000


@dataclass(frozen=True)
class ServiceLimits:
    """What one session may send, and how long anything may wait."""

    max_batch: int = 64
    max_length: int = 2048
    max_message_bytes: int = 512 * 1024 * 1024
    dtypes: tuple[str, ...] = tuple(WIRE_DTYPES)
    turn_timeout_s: float = 120.0
    step_timeout_s: float = 60.0
    session_ttl_s: float = 600.0


@dataclass
class _Session:
    name: str
    channel: SecureChannel
    last_seen: float = field(default_factory=time.monotonic)
    open_step: int | None = None
    step_started: float = 0.0
    output_shape: tuple[int, ...] = ()
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return self.channel.session_id.hex()


class TrunkService:
    """Sessions of authenticated clients against one ``LocalTrunk``."""

    def __init__(
        self,
        trunk: LocalTrunk,
        handshake: ServerHandshake,
        scheduler: TurnScheduler | None = None,
        limits: ServiceLimits | None = None,
    ) -> None:
        self.trunk = trunk
        self.handshake_server = handshake
        self.scheduler = scheduler or TurnScheduler()
        self.limits = limits or ServiceLimits()
        config = trunk.trunk.config
        self.hidden_size = int(getattr(config, "hidden_size", None) or config.n_embd)
        self.layers = trunk.trunk.layer_indices
        self._sessions: dict[bytes, _Session] = {}
        self._sessions_lock = threading.Lock()
        self._compute = threading.Lock()
        self.aggregator = RoundAggregator(self._round_members, self.limits.turn_timeout_s)
        self._adapter_limits = TensorLimits(dtypes=frozenset(self.limits.dtypes), max_elements=1 << 26,
                                            max_bytes=1 << 28)
        self._tensor_limits = TensorLimits(
            dtypes=frozenset(self.limits.dtypes),
            max_elements=self.limits.max_batch * self.limits.max_length * self.hidden_size,
            max_bytes=self.limits.max_message_bytes,
        )

    # -- sessions ------------------------------------------------------------------------------------
    def session_limits(self) -> pb.SessionLimits:
        return pb.SessionLimits(
            hidden_size=self.hidden_size,
            max_batch=self.limits.max_batch,
            max_length=self.limits.max_length,
            max_message_bytes=self.limits.max_message_bytes,
            dtypes=list(self.limits.dtypes),
            trunk_start=self.layers[0],
            trunk_end=self.layers[-1] + 1,
            model_type=str(self.trunk.trunk.config.model_type),
        )

    def open_session(self, client_hello: bytes) -> bytes:
        """Answer a client's signed hello; returns the server hello bytes."""
        try:
            hello = ClientHello.from_bytes(client_hello)
            server_hello, keys = self.handshake_server.respond(hello)
        except UnknownClientError as error:
            raise ServiceError("PERMISSION_DENIED", "unknown_client", str(error)) from None
        except HandshakeError as error:
            raise ServiceError("UNAUTHENTICATED", "bad_handshake", str(error)) from None
        except SecurityError as error:
            raise ServiceError("UNAUTHENTICATED", "bad_handshake", str(error)) from None
        session = _Session(hello.client_name, SecureChannel(keys))
        with self._sessions_lock:
            for old_id, old in list(self._sessions.items()):
                if old.name == hello.client_name:
                    self._end_session(old_id, "replaced by a new session")
            self._sessions[keys.session_id] = session
        self.scheduler.join(hello.client_name)
        log.info("session %s opened for %s", session.key[:8], hello.client_name)
        return server_hello.to_bytes()

    def _round_members(self) -> set[str]:
        with self._sessions_lock:
            return {s.name for s in self._sessions.values()}

    def sessions(self) -> list[str]:
        """Names of the clients with an open session."""
        with self._sessions_lock:
            return sorted(s.name for s in self._sessions.values())

    def _end_session(self, session_id: bytes, reason: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self._abandon_step(session, reason)
        self.scheduler.leave(session.name)
        log.info("session %s of %s closed: %s", session.key[:8], session.name, reason)

    def _abandon_step(self, session: _Session, reason: str) -> None:
        if session.open_step is not None:
            self.trunk.drop(session.key)
            self.scheduler.release(session.name)
            log.warning("step %d of %s abandoned: %s", session.open_step, session.name, reason)
            session.open_step = None

    def reap(self, now: float | None = None) -> None:
        """Free steps whose backward is overdue and sessions that went silent."""
        now = time.monotonic() if now is None else now
        with self._sessions_lock:
            for session_id, session in list(self._sessions.items()):
                if now - session.last_seen > self.limits.session_ttl_s:
                    self._end_session(session_id, f"silent for {self.limits.session_ttl_s:.0f}s")
                elif (session.open_step is not None
                      and now - session.step_started > self.limits.step_timeout_s
                      and session.lock.acquire(blocking=False)):  # a session being served is not idle
                    try:
                        self._abandon_step(session, f"no backward within {self.limits.step_timeout_s:.0f}s")
                    finally:
                        session.lock.release()

    # -- messages ------------------------------------------------------------------------------------
    def handle(self, message: pb.Sealed) -> pb.Sealed:
        """Decrypt, validate and serve one request; returns the sealed reply."""
        return to_wire(self._handle(from_wire(message)))

    def _handle(self, sealed: Sealed) -> Sealed:
        with self._sessions_lock:
            session = self._sessions.get(bytes(sealed.session_id))
        if session is None:
            raise ServiceError("UNAUTHENTICATED", "unknown_session", "no open session with this id")
        with session.lock:
            try:
                plaintext = session.channel.open(sealed)
            except ReplayError as error:
                raise ServiceError("UNAUTHENTICATED", "replayed", str(error)) from None
            except (DecryptionError, SecurityError) as error:
                raise ServiceError("UNAUTHENTICATED", "bad_ciphertext", str(error)) from None
            session.last_seen = time.monotonic()
            if sealed.kind == "close":
                reply = session.channel.seal("close", sealed.step, b"")
            else:
                return self._serve(session, sealed, plaintext)
        with self._sessions_lock:  # outside the session lock: reap() takes them in this order
            self._end_session(bytes(sealed.session_id), "closed by the client")
        return reply

    def _serve(self, session: _Session, sealed: Sealed, plaintext: bytes) -> Sealed:
        try:
            request = parse_payload(sealed.kind, plaintext)
            if getattr(request, "step", None) != sealed.step:
                raise WireFormatError("bad_step", "payload step differs from the sealed step")
            if sealed.kind == "forward":
                return self._forward(session, request)
            if sealed.kind == "backward":
                return self._backward(session, request)
            if sealed.kind == "aggregate":
                return self._aggregate(session, request)
            raise WireFormatError("bad_kind", f"a client may not send {sealed.kind[:32]!r}")
        except WireFormatError as error:
            status = "RESOURCE_EXHAUSTED" if error.code == "too_large" else "INVALID_ARGUMENT"
            log.warning("refused a %s from %s: %s", sealed.kind[:32], session.name, error)
            raise ServiceError(status, error.code, error.message) from None

    def _forward(self, session: _Session, request: pb.ForwardRequest) -> Sealed:
        hidden = decode_tensor(request.hidden, self._tensor_limits, (None, None, self.hidden_size))
        batch, length = hidden.shape[:2]
        if batch > self.limits.max_batch or length > self.limits.max_length:
            raise WireFormatError("too_large", f"batch {batch} x length {length} exceeds "
                                  f"{self.limits.max_batch} x {self.limits.max_length}")
        mask = lengths_to_mask(request.lengths, length, batch_size=batch, max_batch=self.limits.max_batch,
                               max_length=self.limits.max_length)
        if not request.train:
            with self._compute:
                output = self.trunk.forward(session.key, hidden, mask, train=False)
            return self._reply(session, "forward_reply", request.step, output, request.hidden.dtype)
        if session.open_step is not None:
            raise WireFormatError("step_open", f"step {session.open_step} is still waiting for its backward")
        try:
            self.scheduler.acquire(session.name, self.limits.turn_timeout_s)
        except TurnTimeout as error:
            raise ServiceError("UNAVAILABLE", "busy", str(error)) from None
        try:
            with self._compute:
                output = self.trunk.forward(session.key, hidden, mask, train=True)
        except BaseException:
            self.scheduler.release(session.name)
            raise
        session.open_step = request.step
        session.step_started = time.monotonic()
        session.output_shape = tuple(output.shape)
        return self._reply(session, "forward_reply", request.step, output, request.hidden.dtype)

    def _backward(self, session: _Session, request: pb.BackwardRequest) -> Sealed:
        if session.open_step != request.step:
            raise WireFormatError("no_open_step", f"no forward of step {request.step} awaits a backward")
        try:
            grad = decode_tensor(request.grad, self._tensor_limits, session.output_shape)
            with self._compute:
                grad_in = self.trunk.backward(session.key, grad)
        except BaseException:
            self._abandon_step(session, "its backward was refused")
            raise
        session.open_step = None
        self.scheduler.release(session.name)
        return self._reply(session, "backward_reply", request.step, grad_in, request.grad.dtype)

    def _aggregate(self, session: _Session, request: pb.AggregateRequest) -> Sealed:
        if not (math.isfinite(request.weight) and request.weight > 0):
            raise WireFormatError("bad_weight", "the FedAvg weight must be a positive number")
        if len(request.tensors) > MAX_ADAPTER_TENSORS:
            raise WireFormatError("too_large", f"more than {MAX_ADAPTER_TENSORS} adapter tensors")
        state: dict[str, torch.Tensor] = {}
        for item in request.tensors:
            if not item.name or len(item.name) > 512 or item.name in state:
                raise WireFormatError("bad_name", "adapter tensor names must be unique, 1-512 characters")
            state[item.name] = decode_tensor(item.tensor, self._adapter_limits)
        try:
            average, contributors = self.aggregator.submit(session.name, request.round, request.weight, state)
        except AggregationError as error:
            raise WireFormatError("bad_round", str(error)) from None
        reply = pb.AggregateReply(step=request.step, round=request.round, contributors=contributors)
        for name in sorted(average):
            reply.tensors.add(name=name, tensor=encode_tensor(average[name], "float32"))
        return session.channel.seal("aggregate_reply", request.step, reply.SerializeToString())

    @staticmethod
    def _reply(session: _Session, kind: str, step: int, tensor: torch.Tensor, dtype: str) -> Sealed:
        message_type = pb.ForwardReply if kind == "forward_reply" else pb.BackwardReply
        field_name = "hidden" if kind == "forward_reply" else "grad"
        message = message_type(step=step, **{field_name: encode_tensor(tensor, dtype)})
        return session.channel.seal(kind, step, message.SerializeToString())
