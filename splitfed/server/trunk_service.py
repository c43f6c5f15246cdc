"""The trunk as a network service, independent of the RPC library: sessions, decryption, validation.

Every request is authenticated and decrypted with its session's keys, parsed, and checked against
the session limits before any tensor is allocated. Anything wrong becomes a ``ServiceError`` with a
precise status; the service and the other sessions are unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

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
from splitfed.server.admission import SessionGate, Ticket
from splitfed.server.aggregator import AggregationError, RoundAggregator
from splitfed.server.batcher import Batcher, DroppedFromStep
from splitfed.server.client_batch import ForwardItem
from splitfed.server.compute import ComputeThread
from splitfed.server.generation import GenerationCaches, GenerationError
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.round_requests import (
    adapter_tensors,
    add_average,
    check_weight,
    secagg_reply,
    secagg_value,
)
from splitfed.server.scheduler import TurnScheduler, TurnTimeout
from splitfed.server.secure_rounds import SecureRounds
from splitfed.server.service_parts import ServiceLimits, Session, SubServer, shutting_down
from splitfed.server.sub_averaging import SubServerAveraging
from splitfed.server.two_part import TwoPartTrunk
from splitfed.transport import (
    TensorLimits,
    WireFormatError,
    decode_int64,
    decode_tensor,
    encode_tensor,
    lengths_to_mask,
    parse_payload,
    pb,
)
from splitfed.transport.errors import ServiceError
from splitfed.transport.messages import CLOSE_INTERRUPTED

__all__ = ["ServiceLimits", "TrunkService"]

log = logging.getLogger(__name__)

AGGREGATIONS = ("secure", "plain")


class TrunkService:
    """Sessions of authenticated clients against one ``LocalTrunk``."""

    def __init__(
        self,
        trunk: LocalTrunk,
        handshake: ServerHandshake,
        scheduler: TurnScheduler | None = None,
        limits: ServiceLimits | None = None,
        sub_trunks: list[LocalTrunk] | None = None,
        average_every: int = 1,
        roster: list[str] | None = None,
        batcher: Batcher | None = None,
        aggregation: str = "secure",
        secagg_threshold: int | None = None,
        max_norm_ratio: float | None = 2.0,
    ) -> None:
        """``sub_trunks`` (hierarchical mode): more trunks over the same frozen base, one per extra
        sub-server; clients are spread over the sub-servers (roster position, else arrival order, modulo
        their number), which serve in parallel and average their adapters every ``average_every`` steps.
        ``aggregation``: "secure" (FedAvg rounds under secure aggregation: the server learns only the
        average; ``secagg_threshold`` clients must stay to the end, default a majority) or "plain"."""
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.aggregation = aggregation
        self.trunk = trunk
        self.batcher = batcher  # client-batch mode: training steps go through it
        self.handshake_server = handshake
        self.scheduler = scheduler or TurnScheduler(roster)
        self.limits = limits or ServiceLimits()
        trunks = [trunk, *(sub_trunks or [])]
        self._roster = roster
        if len(trunks) == 1:
            compute = batcher.compute if batcher is not None else ComputeThread()
            self._subs = [SubServer(trunk, self.scheduler, compute)]
        else:  # parallel sub-servers share the cores: each gets its part of the torch threads
            threads = max(1, torch.get_num_threads() // len(trunks))
            rosters = [[n for i, n in enumerate(roster) if i % len(trunks) == k] if roster else None
                       for k in range(len(trunks))]
            self._subs = [SubServer(t, TurnScheduler(rosters[k]), ComputeThread(f"trunk-compute-{k}",
                                                                                 threads))
                          for k, t in enumerate(trunks)]
        for sub in self._subs:
            sub.generation = GenerationCaches(
                sub.trunk.trunk, self.limits.generation_budget_bytes // len(self._subs),
                self.limits.generation_ttl_s, self.limits.generation_streams, compute=sub.compute)
        self.progress: dict[str, int] = {}  # completed training steps per client
        self.draining = False
        self._drain_lock = threading.Lock()
        self.after_step: Callable[[TrunkService], None] | None = None  # e.g. periodic checkpoints
        self._arrivals = 0
        self.averaging = SubServerAveraging(self._subs, average_every, self.limits.turn_timeout_s)
        config = trunk.trunk.config
        self.hidden_size = int(getattr(config, "hidden_size", None) or config.n_embd)
        self.layers = trunk.trunk.layer_indices
        self._sessions: dict[bytes, Session] = {}
        self._sessions_lock = threading.Lock()
        self.aggregator = RoundAggregator(self._round_members, self.limits.turn_timeout_s)
        self.secure_rounds = SecureRounds(self._round_members, self.limits.turn_timeout_s, secagg_threshold,
                                          max_norm_ratio)
        self._adapter_limits = TensorLimits(dtypes=frozenset(self.limits.dtypes), max_elements=1 << 26,
                                            max_bytes=1 << 28)
        self._tensor_limits = TensorLimits(
            dtypes=frozenset(self.limits.dtypes),
            max_elements=self.limits.max_batch * self.limits.max_length * self.hidden_size,
            max_bytes=self.limits.max_message_bytes,
        )
        tokens = self.limits.max_batch * self.limits.max_length
        self.gate = SessionGate(tensor_bytes=tokens * (self.hidden_size * 4 + 8),  # fp32 states + labels
                                adapter_bytes=self._adapter_limits.max_bytes,
                                max_message_bytes=self.limits.max_message_bytes,
                                in_flight=self.limits.requests_in_flight, rate=self.limits.requests_per_s,
                                burst=self.limits.request_burst)

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
            aggregation=self.aggregation,
            layout=self.layout,
        )

    @property
    def layout(self) -> str:
        """"two-part" when this server also runs the LM head and the loss, else "three-part"."""
        return "two-part" if isinstance(self.trunk, TwoPartTrunk) else "three-part"

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
        session = Session(hello.client_name, SecureChannel(keys))
        with self._sessions_lock:
            for old_id, old in list(self._sessions.items()):
                if old.name == hello.client_name:
                    self._end_session(old_id, "replaced by a new session")
            session.sub = self._assign(hello.client_name)
            session.sub.sessions += 1
            self._sessions[keys.session_id] = session
        session.sub.scheduler.join(hello.client_name)
        if session.sub.scheduler is not self.scheduler:
            self.scheduler.join(hello.client_name)
        log.info("session %s opened for %s", session.key[:8], hello.client_name)
        return server_hello.to_bytes()

    def _assign(self, name: str) -> SubServer:
        if len(self._subs) == 1:
            return self._subs[0]
        if self._roster and name in self._roster:
            index = self._roster.index(name)
        else:
            index, self._arrivals = self._arrivals, self._arrivals + 1
        return self._subs[index % len(self._subs)]

    def _round_members(self) -> set[str]:
        with self._sessions_lock:
            return {s.name for s in self._sessions.values()}

    def sessions(self) -> list[str]:
        """Names of the clients with an open session."""
        with self._sessions_lock:
            return sorted(s.name for s in self._sessions.values())

    def _end_session(self, session_id: bytes, reason: str, finished: bool = True) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self._abandon_step(session, reason)
        assert session.sub is not None
        if session.sub.generation is not None:
            session.sub.generation.release(session.key)
        session.sub.sessions -= 1
        session.sub.scheduler.leave(session.name, finished)
        if session.sub.scheduler is not self.scheduler:
            self.scheduler.leave(session.name, finished)
        self.averaging.notify()
        log.info("session %s of %s closed: %s", session.key[:8], session.name, reason)

    def _abandon_step(self, session: Session, reason: str) -> None:
        if session.open_step is not None and self.batcher is not None:
            session.open_step = None  # the batch's backward deadline leaves it out
        if session.open_step is not None:
            assert session.sub is not None
            session.sub.trunk.drop(session.key)
            session.sub.scheduler.release(session.name)
            log.warning("step %d of %s abandoned: %s", session.open_step, session.name, reason)
            session.open_step = None

    def reap(self, now: float | None = None) -> None:
        """Free steps whose backward is overdue and sessions that went silent."""
        now = time.monotonic() if now is None else now
        for sub in self._subs:
            if sub.generation is not None:
                sub.generation.expire(now)
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
    def admit(self, session_id: bytes, kind: str) -> Ticket:
        """Let one request in before any of it is buffered: a known session, a kind a client may send,
        within the client's requests in flight and rate; the ticket bounds the message's bytes."""
        with self._sessions_lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise ServiceError("UNAUTHENTICATED", "unknown_session", "no open session with this id")
        return self.gate.admit(session.name, kind)

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
                finished = plaintext != CLOSE_INTERRUPTED
            else:
                return self._serve(session, sealed, plaintext)
        with self._sessions_lock:  # outside the session lock: reap() takes them in this order
            self._end_session(bytes(sealed.session_id), "closed by the client" if finished else
                              "interrupted by the client (it will resume)", finished=finished)
        return reply

    def _serve(self, session: Session, sealed: Sealed, plaintext: bytes) -> Sealed:
        try:
            request = parse_payload(sealed.kind, plaintext)
            if getattr(request, "step", None) != sealed.step:
                raise WireFormatError("bad_step", "payload step differs from the sealed step")
            if sealed.kind == "loss":
                return self._loss(session, request)
            if self.layout == "two-part" and sealed.kind in ("forward", "backward"):
                raise WireFormatError("wrong_layout", "this server runs the two-part layout: it takes "
                                      f"'loss' messages, not {sealed.kind!r}")
            if sealed.kind == "forward":
                return self._forward(session, request)
            if sealed.kind == "backward":
                return self._backward(session, request)
            if sealed.kind == "aggregate":
                return self._aggregate(session, request)
            if sealed.kind == "secagg":
                return self._secagg(session, request)
            if sealed.kind == "generate":
                return self._generate(session, request)
            raise WireFormatError("bad_kind", f"a client may not send {sealed.kind[:32]!r}")
        except WireFormatError as error:
            status = "RESOURCE_EXHAUSTED" if error.code == "too_large" else "INVALID_ARGUMENT"
            log.warning("refused a %s from %s: %s", sealed.kind[:32], session.name, error)
            raise ServiceError(status, error.code, error.message) from None

    def _hidden_and_mask(self, request, past: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The request's hidden states (B, T, H) and attention mask, within the session limits
        (``past`` cached positions count towards the length)."""
        hidden = decode_tensor(request.hidden, self._tensor_limits, (None, None, self.hidden_size))
        batch, length = hidden.shape[:2]
        if batch > self.limits.max_batch or past + length > self.limits.max_length:
            raise WireFormatError("too_large", f"batch {batch} x length {past + length} exceeds "
                                  f"{self.limits.max_batch} x {self.limits.max_length}")
        mask = lengths_to_mask(request.lengths, length, batch_size=batch, max_batch=self.limits.max_batch,
                               max_length=self.limits.max_length)
        return hidden, mask

    def _forward(self, session: Session, request: pb.ForwardRequest) -> Sealed:
        hidden, mask = self._hidden_and_mask(request)
        sub = session.sub
        assert sub is not None
        if self.batcher is not None:
            return self._batched_forward(session, request, hidden, mask)
        if not request.train:  # one of a client's scoring forwards queued at a time: a flood waits its turn
            with session.scoring:
                output = sub.compute.run(sub.trunk.forward, session.key, hidden, mask, train=False)
            return self._reply(session, "forward_reply", request.step, output, request.hidden.dtype)
        if self.draining:
            raise shutting_down()
        if session.open_step is not None:
            raise WireFormatError("step_open", f"step {session.open_step} is still waiting for its backward")
        try:
            sub.scheduler.acquire(session.name, self.limits.turn_timeout_s)
        except TurnTimeout as error:
            raise ServiceError("UNAVAILABLE", "busy", str(error)) from None
        try:
            if self.draining:  # it waited for its turn while the server began to stop
                raise shutting_down()
            self.averaging.wait_for_average(sub)  # holding the turn: no step of this sub-server is open
            self._open_step(session, request.step)
            output = sub.compute.run(sub.trunk.forward, session.key, hidden, mask, train=True)
        except BaseException:
            session.open_step = None
            sub.scheduler.release(session.name)
            raise
        session.output_shape = tuple(output.shape)
        return self._reply(session, "forward_reply", request.step, output, request.hidden.dtype)

    def _batched_forward(self, session: Session, request: pb.ForwardRequest, hidden: torch.Tensor,
                         mask: torch.Tensor) -> Sealed:
        assert self.batcher is not None
        if not request.train:
            output = self.batcher.evaluate(hidden, mask)
            return self._reply(session, "forward_reply", request.step, output, request.hidden.dtype)
        if request.labelled_tokens < 1:
            raise WireFormatError("no_labelled_tokens", "client-batch training needs labelled_tokens >= 1")
        if session.open_step is not None:
            raise WireFormatError("step_open", f"step {session.open_step} is still waiting for its backward")
        item = ForwardItem(session.key, hidden, mask, int(request.labelled_tokens))
        self._open_step(session, request.step)
        try:
            output = self.batcher.forward(item, self.limits.turn_timeout_s)
        except TimeoutError as error:
            session.open_step = None
            raise ServiceError("UNAVAILABLE", "busy", str(error)) from None
        except BaseException:
            session.open_step = None
            raise
        session.output_shape = tuple(output.shape)
        return self._reply(session, "forward_reply", request.step, output, request.hidden.dtype)

    def _batched_backward(self, session: Session, request: pb.BackwardRequest) -> Sealed:
        assert self.batcher is not None
        try:
            grad = decode_tensor(request.grad, self._tensor_limits, session.output_shape)
            grad_in = self.batcher.backward(session.key, grad)
        except DroppedFromStep as error:
            session.open_step = None
            raise ServiceError("FAILED_PRECONDITION", "dropped_from_step", str(error)) from None
        except BaseException:
            session.open_step = None
            raise
        self._count_step(session, int(grad.shape[0]))
        return self._reply(session, "backward_reply", request.step, grad_in, request.grad.dtype)

    def _backward(self, session: Session, request: pb.BackwardRequest) -> Sealed:
        if session.open_step != request.step:
            raise WireFormatError("no_open_step", f"no forward of step {request.step} awaits a backward")
        if self.batcher is not None:
            return self._batched_backward(session, request)
        sub = session.sub
        assert sub is not None
        try:
            grad = decode_tensor(request.grad, self._tensor_limits, session.output_shape)
            grad_in = sub.compute.run(sub.trunk.backward, session.key, grad)
        except BaseException:
            self._abandon_step(session, "its backward was refused")
            raise
        self._count_step(session, int(grad.shape[0]))
        if self.after_step is not None and len(self._subs) == 1:
            self.after_step(self)  # still holding the turn: no other step is open
        sub.scheduler.release(session.name)
        return self._reply(session, "backward_reply", request.step, grad_in, request.grad.dtype)

    def _loss(self, session: Session, request: pb.LossRequest) -> Sealed:
        """Two-part layout: the rest of the model and the loss on the head's output and the labels."""
        sub = session.sub
        assert sub is not None
        trunk = sub.trunk
        if not isinstance(trunk, TwoPartTrunk):
            raise WireFormatError("wrong_layout", "this server runs the three-part layout: it takes "
                                  "forward/backward, not 'loss'")
        hidden, mask = self._hidden_and_mask(request)
        batch, length = hidden.shape[:2]
        labels = decode_int64(request.labels, batch * length, (batch, length))
        vocab = int(trunk.tail.config.vocab_size)
        if bool(((labels != -100) & ((labels < 0) | (labels >= vocab))).any()):
            raise WireFormatError("bad_labels", f"labels must be -100 or token ids below {vocab}")
        if not request.train:
            result = sub.compute.run(trunk.loss, session.key, hidden, mask, labels, train=False)
            assert result.row_nll is not None and result.row_tokens is not None
            reply = pb.LossReply(step=request.step, loss=result.loss, row_nll=result.row_nll.tolist(),
                                 row_tokens=result.row_tokens.tolist())
            return session.channel.seal("loss_reply", request.step, reply.SerializeToString())
        if self.draining:
            raise shutting_down()
        try:
            sub.scheduler.acquire(session.name, self.limits.turn_timeout_s)
        except TurnTimeout as error:
            raise ServiceError("UNAVAILABLE", "busy", str(error)) from None
        try:
            self._open_step(session, request.step)
            result = sub.compute.run(trunk.loss, session.key, hidden, mask, labels, train=True)
            self._count_step(session, batch)
            if self.after_step is not None and len(self._subs) == 1:
                self.after_step(self)  # still holding the turn: no other step is open
        finally:
            session.open_step = None
            sub.scheduler.release(session.name)
        assert result.grad is not None
        reply = pb.LossReply(step=request.step, loss=result.loss,
                             grad=encode_tensor(result.grad, request.hidden.dtype))
        return session.channel.seal("loss_reply", request.step, reply.SerializeToString())

    @property
    def sub_servers(self) -> list[LocalTrunk]:
        """The trunk of each sub-server (one, except in hierarchical mode)."""
        return [sub.trunk for sub in self._subs]

    @property
    def steps(self) -> int:
        """Trunk optimizer steps over all sub-servers (or batches, in client-batch mode)."""
        if self.batcher is not None:
            return self.batcher.trunk.steps
        return sum(sub.trunk.steps for sub in self._subs)

    @property
    def averages(self) -> int:
        """Averages of the sub-servers' trunk adapters so far (hierarchical mode)."""
        return self.averaging.averages

    def _count_step(self, session: Session, samples: int) -> None:
        """Count a finished training step; only then is it closed, so that ``drain`` waits for it."""
        assert session.sub is not None

        def progress() -> None:
            self.progress[session.name] = self.progress.get(session.name, 0) + 1
            session.open_step = None

        self.averaging.count_step(session.sub, samples, progress)

    def _open_step(self, session: Session, step: int) -> None:
        """Mark a training step open before its trunk work starts, or refuse it if the server drains:
        atomic with ``drain``, so that a checkpoint never misses a step that began before it."""
        with self._drain_lock:
            if self.draining:
                raise shutting_down()
            session.open_step = step
            session.step_started = time.monotonic()

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Stop admitting training steps and wait until none is open; True when the service is quiet
        (the state is then consistent for a checkpoint), False if steps were still open at the timeout."""
        with self._drain_lock:
            self.draining = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._sessions_lock:
                open_steps = [s.name for s in self._sessions.values() if s.open_step is not None]
            if not open_steps:
                return True
            time.sleep(0.05)
        log.warning("steps of %s still open after %.0fs of draining", ", ".join(open_steps), timeout_s)
        return False

    def status(self) -> dict:
        """Connected clients, mode and progress, for ``splitfed status``."""
        mode = "client-batch" if self.batcher is not None else (
            "hierarchical" if len(self._subs) > 1 else "sequential")
        caches = [sub.generation for sub in self._subs if sub.generation is not None]
        return {"mode": mode, "sub_servers": len(self._subs), "aggregation": self.aggregation,
                "sessions": self.sessions(), "steps": self.steps, "progress": dict(self.progress),
                "plain_rounds": self.aggregator.completed_round,
                "secure_rounds": self.secure_rounds.last_round,
                "generation_streams": sum(len(c.streams()) for c in caches),
                "generation_cache_mib": sum(c.bytes_in_use for c in caches) / 2**20,
                "draining": self.draining}

    def close(self) -> None:
        """Stop the sub-servers' compute threads (after the last request)."""
        for sub in self._subs:
            sub.compute.close()

    def finish(self) -> None:
        """At the end: average the sub-servers' adapters once more if they trained since the last."""
        self.averaging.average_all()

    def _aggregate(self, session: Session, request: pb.AggregateRequest) -> Sealed:
        if self.aggregation != "plain":
            raise WireFormatError("secure_aggregation_required", "this server aggregates only under secure "
                                  "aggregation (kind 'secagg'); plain adapters are refused")
        check_weight(request.weight)
        state = adapter_tensors(request.tensors, lambda wire: decode_tensor(wire, self._adapter_limits))
        try:
            average, contributors = self.aggregator.submit(session.name, request.round, request.weight, state)
        except AggregationError as error:
            raise WireFormatError("bad_round", str(error)) from None
        reply = pb.AggregateReply(step=request.step, round=request.round, contributors=contributors)
        add_average(reply, average)
        return session.channel.seal("aggregate_reply", request.step, reply.SerializeToString())

    def _generate(self, session: Session, request: pb.GenerateRequest) -> Sealed:
        sub = session.sub
        assert sub is not None and sub.generation is not None
        if request.release:
            sub.generation.release(session.key, request.stream)
            reply = pb.GenerateReply(step=request.step)
            return session.channel.seal("generate_reply", request.step, reply.SerializeToString())
        if request.stream >= 1 << 16:
            raise WireFormatError("bad_stream", "stream numbers go up to 65535")
        past = int(request.lengths.past_length)
        hidden, mask = self._hidden_and_mask(request, past)
        try:
            output, cached = sub.generation.step(session.key, request.stream, hidden, mask, past,
                                                 use_cache=request.use_cache)
        except GenerationError as error:
            status = "RESOURCE_EXHAUSTED" if error.code == "cache_budget" else "FAILED_PRECONDITION"
            raise ServiceError(status, error.code, error.message) from None
        if isinstance(sub.trunk, TwoPartTrunk):  # the LM head runs here: return the last position's logits
            with torch.no_grad():
                output = sub.trunk.tail(output[:, -1:], None)
        reply = pb.GenerateReply(step=request.step, hidden=encode_tensor(output, request.hidden.dtype),
                                 cached_tokens=cached)
        return session.channel.seal("generate_reply", request.step, reply.SerializeToString())

    def _secagg(self, session: Session, request: pb.SecAggRequest) -> Sealed:
        if self.aggregation != "secure":
            raise WireFormatError("plain_aggregation", "this server runs plain FedAvg rounds (kind "
                                  "'aggregate'), not secure aggregation")
        value = secagg_value(request, self._adapter_limits.max_elements)
        try:
            result = self.secure_rounds.submit(session.name, request.round, request.phase, value)
        except AggregationError as error:
            raise WireFormatError("bad_round", str(error)) from None
        reply = secagg_reply(request, result)
        return session.channel.seal("secagg_reply", request.step, reply.SerializeToString())

    @staticmethod
    def _reply(session: Session, kind: str, step: int, tensor: torch.Tensor, dtype: str) -> Sealed:
        message_type = pb.ForwardReply if kind == "forward_reply" else pb.BackwardReply
        field_name = "hidden" if kind == "forward_reply" else "grad"
        message = message_type(step=step, **{field_name: encode_tensor(tensor, dtype)})
        return session.channel.seal(kind, step, message.SerializeToString())
