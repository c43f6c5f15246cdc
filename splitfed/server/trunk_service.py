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

from splitfed.aggregation import PLAIN_PHASE, ROUND_AGGREGATIONS, AggregationError, make_rounds, rounds_status
from splitfed.aggregation.robust import RobustAggregationSettings, ServedWeights
from splitfed.endpoints import MicroBatch
from splitfed.layout import Layout, TrunkRange
from splitfed.models import adapter_state, hidden_size, max_positions
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
from splitfed.server.fair_use import FairUse
from splitfed.server.generation import GenerationError
from splitfed.server.gradient_guard import GradientGuard, GradientGuardSettings, GradientRefused
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.modes import Mode, StepBook
from splitfed.server.round_requests import (
    adapter_tensors,
    add_average,
    check_weight,
    secagg_reply,
    secagg_value,
)
from splitfed.server.scheduler import TurnScheduler
from splitfed.server.service_parts import ServiceLimits, Session, requested_micro_batch
from splitfed.transport import (
    TensorLimits,
    WireFormatError,
    adapter_limits,
    decode_int64,
    decode_tensor,
    encode_like,
    lengths_to_mask,
    parse_payload,
    pb,
)
from splitfed.transport.admission import SessionGate, Ticket
from splitfed.transport.envelope import CLOSE_INTERRUPTED
from splitfed.transport.errors import ServiceError

__all__ = ["ServiceLimits", "TrunkService"]

log = logging.getLogger(__name__)

class TrunkService:
    """Sessions of authenticated clients against the trunk, trained by ``mode``."""

    def __init__(
        self,
        mode: Mode,
        handshake: ServerHandshake,
        limits: ServiceLimits | None = None,
        aggregation: str = "secure",
        secagg_threshold: int | None = None,
        max_norm_ratio: float | None = 2.0,
        base_id: str | None = None,
        gradient_guard: GradientGuardSettings | None = None,
        robust_aggregation: RobustAggregationSettings | None = None,
    ) -> None:
        """``mode``: how training steps meet the trunk (``splitfed.server.modes``). ``aggregation``:
        "secure" (FedAvg rounds under secure aggregation: the server learns only the average;
        ``secagg_threshold`` clients must stay to the end, default a majority) or "plain".
        ``base_id``: the digest of the base model the trunk comes from; a client whose parts come
        from another base is refused at the handshake. ``gradient_guard``: how clients' gradients are
        bounded before they reach the trunk (``splitfed.server.gradient_guard``). ``robust_aggregation``:
        how much a client weighs in a FedAvg round (what the server ran for it, capped) and how a
        round's result is made and checked (``splitfed.aggregation.robust``; None: FedAvg weighted by
        what the server ran, the average checked only for finiteness and ``max_norm_ratio``)."""
        if aggregation not in ROUND_AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {tuple(ROUND_AGGREGATIONS)}, got {aggregation!r}")
        self.aggregation = aggregation
        self.base_id = base_id
        self.guard = GradientGuard(gradient_guard)
        self.load_report: dict[str, float] | None = None  # how the trunk was loaded (status, benchmarks)
        self.mode = mode
        self.handshake_server = handshake
        self.limits = limits or ServiceLimits()
        self.book = StepBook()
        self.fair = FairUse(self.limits.fair_use)
        self._trained_at: dict[str, float] = {}  # client -> when its last training step finished
        self.book.on_finished = self._step_finished
        self._after_step: Callable[[TrunkService], None] | None = None
        mode.start(self.book, self.limits)
        part = mode.part
        self.hidden_size = hidden_size(part.config)
        self.max_positions = max_positions(part.config)  # None: the model names no limit
        self.layers = part.layer_indices
        self._sessions: dict[bytes, Session] = {}
        self._sessions_lock = threading.Lock()
        robust = robust_aggregation or RobustAggregationSettings.unchecked()
        self.served = ServedWeights(robust.max_weight)  # training rows run per client since its last round
        self.rounds = make_rounds(aggregation, self._round_members, self.limits.turn_timeout_s,
                                  secagg_threshold, max_norm_ratio, participants=self._round_participants,
                                  straggler_s=self.limits.round_straggler_s, weights=self.served,
                                  robust=robust, reference=self._trunk_adapter)
        if self.limits.first_block_max or self.limits.end_block_min:
            if not hasattr(self.rounds, "partial_keys"):
                raise ValueError(f"{aggregation} aggregation needs every client to hold the same blocks; "
                                 "clients with their own partitions take aggregation: plain")
            self.rounds.partial_keys = True  # each block's adapter averaged over the clients holding it
        self._adapter_limits = adapter_limits()  # adapters travel in float32, whatever the step codecs
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

    # -- what the process and checkpoints see ---------------------------------------------------------
    @property
    def after_step(self) -> Callable[[TrunkService], None] | None:
        """Run after a training step while no other step is open (sequential turns), e.g. checkpoints."""
        return self._after_step

    @after_step.setter
    def after_step(self, hook: Callable[[TrunkService], None] | None) -> None:
        self._after_step = hook
        self.book.after_step = None if hook is None else (lambda: hook(self))

    @property
    def draining(self) -> bool:
        return self.book.draining

    @property
    def progress(self) -> dict[str, int]:
        """Completed training steps per client."""
        return self.book.progress

    @property
    def scheduler(self) -> TurnScheduler:
        return self.mode.scheduler

    @property
    def trunk(self) -> LocalTrunk:
        return self.mode.trunk

    @property
    def sub_servers(self) -> list[LocalTrunk]:
        """The trunk of each sub-server (one, except in hierarchical mode)."""
        return [sub.trunk for sub in self.mode.subs]  # type: ignore[attr-defined]

    @property
    def steps(self) -> int:
        """Trunk optimizer steps over all sub-servers (or batches, in client-batch mode)."""
        return self.mode.steps

    @property
    def averages(self) -> int:
        """Averages of the sub-servers' trunk adapters so far (hierarchical mode)."""
        return self.mode.averages

    # -- sessions ------------------------------------------------------------------------------------
    def session_limits(self) -> pb.SessionLimits:
        return pb.SessionLimits(
            hidden_size=self.hidden_size,
            max_batch=self.limits.max_batch,
            max_length=min(self.limits.max_length, self.max_positions or self.limits.max_length),
            max_message_bytes=self.limits.max_message_bytes,
            dtypes=list(self.limits.dtypes),
            trunk_start=self.layers[0],
            trunk_end=self.layers[-1] + 1,
            model_type=str(self.mode.part.config.model_type),
            aggregation=self.aggregation,
            layout=self.layout,
            first_block_max=self.limits.first_block_max,
            end_block_min=self.limits.end_block_min,
            micro_batches_max=self.mode.micro_batches_max,
            base_id=self.base_id or "",
        )

    def _claim_blocks(self, session: Session, first: int, end: int) -> None:
        """The blocks a request names (0, 0: all) become the session's, within the accepted range; a
        session keeps the blocks of its first request."""
        trunk = TrunkRange.of(self.layers[0], self.layers[-1] + 1, self.limits.first_block_max,
                              self.limits.end_block_min)
        if (first, end) in ((0, 0), (trunk.start, trunk.end)):
            claimed = None
        elif trunk.accepts(first, end):
            claimed = (first, end)
        else:
            raise WireFormatError("bad_blocks", f"blocks [{first}:{end}] are outside what this server runs "
                                  f"for a client: {trunk.describe()} (set partition.head and .tail within "
                                  "the server's range)")
        if session.blocks_claimed and session.blocks != claimed:
            raise WireFormatError("blocks_changed", "a session keeps the partition of its first request; "
                                  "reconnect to change it")
        session.blocks, session.blocks_claimed = claimed, True

    @property
    def layout(self) -> str:
        """"two-part" when this server also runs the LM head and the loss, else "three-part"."""
        return self.mode.layout

    def open_session(self, client_hello: bytes, base_id: str = "") -> bytes:
        """Answer a client's signed hello; returns the server hello bytes. A client whose parts come
        from another base model than the trunk (``base_id``) is refused."""
        try:
            hello = ClientHello.from_bytes(client_hello)
            server_hello, keys = self.handshake_server.respond(hello)
        except UnknownClientError as error:
            raise ServiceError("PERMISSION_DENIED", "unknown_client", str(error)) from None
        except HandshakeError as error:
            raise ServiceError("UNAUTHENTICATED", "bad_handshake", str(error)) from None
        except SecurityError as error:
            raise ServiceError("UNAUTHENTICATED", "bad_handshake", str(error)) from None
        self._check_base(hello.client_name, base_id)
        session = Session(hello.client_name, SecureChannel(keys))
        with self._sessions_lock:
            for old_id, old in list(self._sessions.items()):
                if old.name == hello.client_name:
                    self._end_session(old_id, "replaced by a new session")
            self.mode.join(session)
            self._sessions[keys.session_id] = session
        self.mode.joined(session)
        log.info("session %s opened for %s", session.key[:8], hello.client_name)
        return server_hello.to_bytes()

    def _check_base(self, client: str, base_id: str) -> None:
        if not base_id or not self.base_id:
            log.warning("%s: base model of %s not known, not checked against the trunk's", client,
                        "the client's parts" if not base_id else "this trunk")
            return
        if base_id != self.base_id:
            raise ServiceError("FAILED_PRECONDITION", "base_mismatch",
                               f"this client's parts come from another base model (digest {base_id[:12]}) "
                               f"than the server's trunk ({self.base_id[:12]}): load or export the client's "
                               "part from the server's model")

    def _round_members(self) -> set[str]:
        with self._sessions_lock:
            return {s.name for s in self._sessions.values()}

    def _trunk_adapter(self) -> dict[str, torch.Tensor]:
        """The trunk adapter the server trains: the yardstick of a secure round's average."""
        return adapter_state(self.mode.part)

    def _round_participants(self, since: float) -> set[str]:
        """The clients with an open session that sent a training step after ``since`` (monotonic)."""
        with self._sessions_lock:
            names = {s.name for s in self._sessions.values()}
        trained = dict(self._trained_at)
        return {name for name in names if trained.get(name, float("-inf")) > since}

    def _step_finished(self, client: str, seconds: float) -> None:
        """A training step of ``client`` finished ``seconds`` after its forward began."""
        self._trained_at[client] = time.monotonic()
        self.fair.completed(client, seconds)

    def sessions(self) -> list[str]:
        """Names of the clients with an open session."""
        with self._sessions_lock:
            return sorted(s.name for s in self._sessions.values())

    def _end_session(self, session_id: bytes, reason: str, finished: bool = True) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self.mode.abandon(session, reason)
        self.mode.leave(session, finished)
        log.info("session %s of %s closed: %s", session.key[:8], session.name, reason)

    def reap(self, now: float | None = None) -> None:
        """Free steps whose backward is overdue (the deadline follows the measured step time, see
        ``splitfed.server.fair_use``: their clients are slowed down, then suspended) and sessions that
        went silent."""
        now = time.monotonic() if now is None else now
        self.mode.expire(now)
        deadline = self.fair.deadline_s()
        with self._sessions_lock:
            for session_id, session in list(self._sessions.items()):
                if now - session.last_seen > self.limits.session_ttl_s:
                    self._end_session(session_id, f"silent for {self.limits.session_ttl_s:.0f}s")
                elif (session.open_step is not None
                      and now - session.step_started > deadline
                      and session.lock.acquire(blocking=False)):  # a session being served is not idle
                    try:
                        if session.open_step is not None:
                            self.mode.abandon(session, f"no backward within {deadline:.2f}s")
                            self.fair.held(session.name, deadline)  # before its next forward can come
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

    def handle(self, sealed: Sealed) -> Sealed:
        """Decrypt, validate and serve one request; returns the sealed reply."""
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
        if (remaining := self.guard.suspended_for(session.name)) > 0:
            raise ServiceError("PERMISSION_DENIED", "suspended", f"{session.name} is suspended for "
                               f"{remaining:.0f}s more: too many of its gradients were refused or clipped")
        try:
            request = parse_payload(sealed.kind, plaintext)
            if getattr(request, "step", None) != sealed.step:
                raise WireFormatError("bad_step", "payload step differs from the sealed step")
            if sealed.kind == "loss":
                return self._loss(session, request)
            if self.layout == Layout.TWO_PART and sealed.kind in ("forward", "backward"):
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
        if self.max_positions is not None and past + length > self.max_positions:
            raise WireFormatError("beyond_positions", f"{past + length} positions exceed the model's "
                                  f"{self.max_positions} (max_position_embeddings)")
        if batch > self.limits.max_batch or past + length > self.limits.max_length:
            raise WireFormatError("too_large", f"batch {batch} x length {past + length} exceeds "
                                  f"{self.limits.max_batch} x {self.limits.max_length}")
        mask = lengths_to_mask(request.lengths, length, batch_size=batch, max_batch=self.limits.max_batch,
                               max_length=self.limits.max_length)
        return hidden, mask

    def _forward(self, session: Session, request: pb.ForwardRequest) -> Sealed:
        self._claim_blocks(session, int(request.first_block), int(request.end_block))
        micro = requested_micro_batch(request, self.mode.name, self.mode.micro_batches_max)
        hidden, mask = self._hidden_and_mask(request)
        if request.train and (micro is None or micro.index == 0):  # a new step: suspended or slowed?
            self.fair.admit_training(session.name, self.limits.turn_timeout_s)
            self._trained_at[session.name] = time.monotonic()  # it takes part in the coming round
        output = self.mode.forward(session, request.step, hidden, mask, request.train,
                                   int(request.labelled_tokens), micro=micro)
        if request.train:
            self.served.served(session.name, int(hidden.shape[0]))  # its FedAvg weight
        if request.train and micro is None:
            session.output_shape = tuple(output.shape)
        return self._reply(session, "forward_reply", request.step, output, request.hidden)

    def _backward(self, session: Session, request: pb.BackwardRequest) -> Sealed:
        micro, shape = None, session.output_shape
        if session.micro is not None and request.step in session.micro.open:
            index, shape = session.micro.open.pop(request.step)
            micro = MicroBatch(index, session.micro.count)
        elif session.micro is not None or session.open_step != request.step:
            raise WireFormatError("no_open_step", f"no forward of step {request.step} awaits a backward")
        try:
            grad = decode_tensor(request.grad, self._tensor_limits, shape)
            grad = self.guard.check(session.name, grad)
        except GradientRefused as error:
            self.mode.abandon(session, f"its gradient was refused: {error.message}")
            raise ServiceError("INVALID_ARGUMENT", error.code, error.message) from None
        except BaseException:
            self.mode.abandon(session, "its backward was refused")
            raise
        grad_in = self.mode.backward(session, grad, micro=micro)
        return self._reply(session, "backward_reply", request.step, grad_in, request.grad)

    def _loss(self, session: Session, request: pb.LossRequest) -> Sealed:
        """Two-part layout: the rest of the model and the loss on the head's output and the labels."""
        if self.layout != Layout.TWO_PART:
            raise WireFormatError("wrong_layout", "this server runs the three-part layout: it takes "
                                  "forward/backward, not 'loss'")
        hidden, mask = self._hidden_and_mask(request)
        batch, length = hidden.shape[:2]
        labels = decode_int64(request.labels, batch * length, (batch, length))
        result = self.mode.loss(session, request.step, hidden, mask, labels, request.train)
        if request.train:
            self.served.served(session.name, batch)  # its FedAvg weight
        if not request.train:
            assert result.row_nll is not None and result.row_tokens is not None
            reply = pb.LossReply(step=request.step, loss=result.loss, row_nll=result.row_nll.tolist(),
                                 row_tokens=result.row_tokens.tolist())
        else:
            assert result.grad is not None
            reply = pb.LossReply(step=request.step, loss=result.loss,
                                 grad=encode_like(result.grad, request.hidden))
        return session.channel.seal("loss_reply", request.step, reply.SerializeToString())

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Stop admitting training steps and wait until none is open; True when the service is quiet
        (the state is then consistent for a checkpoint), False if steps were still open at the timeout."""
        with self.book.lock:
            self.book.draining = True
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
        return {**self.mode.status(), "aggregation": self.aggregation, "layout": self.layout,
                "sessions": self.sessions(), "steps": self.steps, "progress": dict(self.progress),
                **rounds_status(self.rounds), "draining": self.draining, **self.fair.status(),
                **self.guard.status(), **(self.rounds.status() if hasattr(self.rounds, "status") else {}),
                **({"load": self.load_report} if self.load_report else {})}

    def close(self) -> None:
        """Stop the sub-servers' compute threads (after the last request)."""
        self.mode.close()

    def finish(self) -> None:
        """At the end: average the sub-servers' adapters once more if they trained since the last."""
        self.mode.finish()

    def _aggregate(self, session: Session, request: pb.AggregateRequest) -> Sealed:
        if self.rounds.message_kind != "aggregate":
            raise WireFormatError("secure_aggregation_required", "this server aggregates only under secure "
                                  "aggregation (kind 'secagg'); plain adapters are refused")
        check_weight(request.weight)
        state = adapter_tensors(request.tensors, lambda wire: decode_tensor(wire, self._adapter_limits))
        try:
            average, contributors = self.rounds.submit(session.name, request.round, PLAIN_PHASE,
                                                       (state, request.weight))
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
        self._claim_blocks(session, int(request.first_block), int(request.end_block))
        past = int(request.lengths.past_length)
        hidden, mask = self._hidden_and_mask(request, past)
        try:
            output, cached = sub.generation.step(session.key, request.stream, hidden, mask, past,
                                                 request.use_cache, session.blocks)
        except GenerationError as error:
            status = "RESOURCE_EXHAUSTED" if error.code == "cache_budget" else "FAILED_PRECONDITION"
            raise ServiceError(status, error.code, error.message) from None
        output = self.mode.generation_output(sub, output)
        reply = pb.GenerateReply(step=request.step, hidden=encode_like(output, request.hidden),
                                 cached_tokens=cached)
        return session.channel.seal("generate_reply", request.step, reply.SerializeToString())

    def _secagg(self, session: Session, request: pb.SecAggRequest) -> Sealed:
        if self.rounds.message_kind != "secagg":
            raise WireFormatError("plain_aggregation", "this server runs plain FedAvg rounds (kind "
                                  "'aggregate'), not secure aggregation")
        value = secagg_value(request, self._adapter_limits.max_elements)
        try:
            result = self.rounds.submit(session.name, request.round, request.phase, value)
        except AggregationError as error:
            raise WireFormatError("bad_round", str(error)) from None
        reply = secagg_reply(request, result)
        return session.channel.seal("secagg_reply", request.step, reply.SerializeToString())

    @staticmethod
    def _reply(session: Session, kind: str, step: int, tensor: torch.Tensor, request: pb.Tensor) -> Sealed:
        """The reply in the codec of the request's tensor: a forward's hidden states come back in the
        forward codec, a backward's gradient in the backward codec (each direction as the client chose)."""
        message_type = pb.ForwardReply if kind == "forward_reply" else pb.BackwardReply
        field_name = "hidden" if kind == "forward_reply" else "grad"
        message = message_type(step=step, **{field_name: encode_like(tensor, request)})
        return session.channel.seal(kind, step, message.SerializeToString())
