"""The gRPC server of the trunk: chunking, status codes and logging around a transport-free handler."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from splitfed.security import Sealed
from splitfed.transport import splitfed_pb2 as pb
from splitfed.transport import splitfed_pb2_grpc as pb_grpc
from splitfed.transport.addresses import check_plaintext_allowed
from splitfed.transport.admission import (
    Deadlines,
    FrontDoorLimits,
    RefusalLog,
    TokenBuckets,
    WaitingStreams,
    peer_host,
)
from splitfed.transport.chunking import DEFAULT_CHUNK_BYTES
from splitfed.transport.envelope import GRPC_MESSAGE_LIMIT, chunk_message, from_wire, reassemble, to_wire
from splitfed.transport.errors import ERROR_METADATA_KEY, MAX_ERROR_MESSAGE, ServiceError, WireFormatError

SERVICE_NAME = "splitfed.v1.Trunk"

log = logging.getLogger(__name__)

# gRPC's own limits, set deliberately (grpc core enforces them before any of our code runs):
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),  # one chunk: a peer buffers at most this
    ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
    # an honest client has a handful of calls in flight; more streams on one connection are a flood
    ("grpc.max_concurrent_streams", 32),
    # keepalive enforcement: pings without calls at most every 10 s, two strikes and the peer is cut off
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    # a connection with no call for 10 minutes is closed (clients reconnect transparently); no
    # max_connection_age: a training session legitimately holds one connection for hours
    ("grpc.max_connection_idle_ms", 600_000),
    # a TLS handshake (before any call) must finish within 10 s
    ("grpc.server_handshake_timeout_ms", 10_000),
]


class Admitted(Protocol):
    """A request let in under a session: the most bytes it may carry; ``release`` when served."""

    max_bytes: int

    def release(self) -> None: ...


class TrunkHandler(Protocol):
    """What the RPC layer needs from the trunk service."""

    def open_session(self, client_hello: bytes, base_id: str = "") -> bytes: ...

    def session_limits(self) -> pb.SessionLimits: ...

    def admit(self, session_id: bytes, kind: str) -> Admitted:
        """Let one request of ``kind`` in under ``session_id`` before anything of it is buffered, or
        raise ``ServiceError`` (unknown session, a kind it may not send, too many in flight)."""
        ...

    def handle(self, sealed: Sealed) -> Sealed:
        """Decrypt, validate and serve one request; returns the sealed reply."""
        ...


class TrunkServicer(pb_grpc.TrunkServicer):
    """Maps RPCs to the handler; every refusal becomes a precise status and one (rate-limited) log line.

    Authenticate before allocating: a stream's first chunk names its session and kind, which the
    handler admits (or refuses) before a second chunk is read; the declared chunk count is checked
    against what that session may send. Streams waiting for their first chunk, chunk gaps and
    handshakes per peer are bounded by ``splitfed.transport.admission``."""

    def __init__(self, handler: TrunkHandler, max_message_bytes: int,
                 front_door: FrontDoorLimits | None = None) -> None:
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.front_door = front_door or FrontDoorLimits()
        self.waiting = WaitingStreams(self.front_door.unauthenticated_streams,
                                      self.front_door.unauthenticated_per_peer)
        self.deadlines = Deadlines()
        self.handshakes = TokenBuckets(self.front_door.handshakes_per_s, self.front_door.handshake_burst)
        self.refusals = RefusalLog(log)

    def Handshake(self, request: pb.Hello, context: grpc.ServicerContext) -> pb.HelloReply:  # noqa: N802
        if not self.handshakes.take(peer_host(context.peer())):
            self._abort(context, ServiceError("RESOURCE_EXHAUSTED", "handshake_rate",
                                              "too many handshakes from this address; retry later"),
                        "handshake")
        try:
            server_hello = self.handler.open_session(bytes(request.client_hello), str(request.base_id))
        except ServiceError as error:
            self._abort(context, error, "handshake")
        return pb.HelloReply(server_hello=server_hello, limits=self.handler.session_limits())

    def Step(self, request_iterator: Iterator[pb.Sealed], context: grpc.ServicerContext):  # noqa: N802
        first = self._first_chunk(request_iterator, context)
        admitted = self._admit(first, context)
        chunks = self._paced(first, request_iterator, context)

        def whole() -> Sealed:
            try:
                return reassemble(chunks, admitted.max_bytes)
            finally:  # the message is whole (or refused): its idle deadline must not run on while the
                chunks.close()  # step waits for its turn or computes (it cancelled slow steps)

        try:
            reply = self._serve(whole, context)
        finally:
            admitted.release()
        yield from chunk_message(reply)

    def _first_chunk(self, request_iterator: Iterator[pb.Sealed], context: grpc.ServicerContext) -> pb.Sealed:
        """The stream's first chunk within ``first_message_s``, as one of the bounded waiting streams."""
        waiting = self.waiting.enter(peer_host(context.peer()), context.cancel)
        deadline = self.deadlines.watch(self.front_door.first_message_s, context.cancel)
        try:
            return next(request_iterator)
        except StopIteration:
            self._abort(context, ServiceError("INVALID_ARGUMENT", "empty_stream", "the stream carried no "
                                              "message"), "step")
        except grpc.RpcError:  # cancelled: past its deadline, evicted, or the peer went away
            self.refusals.warning("stream from %s cancelled before its first chunk (deadline %.0fs or "
                                  "evicted)", peer_host(context.peer()), self.front_door.first_message_s)
            raise
        finally:
            self.deadlines.done(deadline)
            self.waiting.leave(waiting)
        raise AssertionError("unreachable: context.abort raises")

    def _admit(self, first: pb.Sealed, context: grpc.ServicerContext) -> Admitted:
        """The session's admission of the message ``first`` begins, with its declared size checked."""
        try:
            admitted = self.handler.admit(bytes(first.session_id), first.kind)
        except ServiceError as error:
            self._abort(context, error, "step")
        limit = min(admitted.max_bytes, self.max_message_bytes)
        if first.chunk_count > max(1, -(-limit // DEFAULT_CHUNK_BYTES)):
            admitted.release()
            self._abort(context, ServiceError("RESOURCE_EXHAUSTED", "too_large", f"{first.chunk_count} "
                                              f"chunks exceed what this session may send ({limit} bytes)"),
                        "step")
        admitted.max_bytes = limit
        return admitted

    def _paced(self, first: pb.Sealed, rest: Iterator[pb.Sealed],
               context: grpc.ServicerContext) -> Iterator[pb.Sealed]:
        """``first`` then the rest of the stream, each chunk within ``idle_s`` of the one before."""
        yield first
        deadline = self.deadlines.watch(self.front_door.idle_s, context.cancel)
        try:
            for chunk in rest:
                self.deadlines.extend(deadline, self.front_door.idle_s)
                yield chunk
        finally:
            self.deadlines.done(deadline)

    def Exchange(self, request: pb.Sealed, context: grpc.ServicerContext) -> pb.Sealed:  # noqa: N802
        admitted = self._admit(request, context)

        def whole() -> Sealed:
            if request.chunk_count != 1 or request.chunk_index != 0:
                raise WireFormatError("bad_chunk", "Exchange carries one whole message (chunk 0 of 1)")
            if len(request.ciphertext) > admitted.max_bytes:
                raise WireFormatError("too_large", "message exceeds the session's byte limit")
            return from_wire(request)

        try:
            reply = to_wire(self._serve(whole, context))
        finally:
            admitted.release()
        if reply.ByteSize() > GRPC_MESSAGE_LIMIT:  # the client sends here only what has a same-size reply
            self._abort(context, ServiceError("INTERNAL", "reply_too_large",
                                              "the reply does not fit one message; use Step"), "step")
        return reply

    def _serve(self, receive: Callable[[], Sealed], context: grpc.ServicerContext,
               what: str = "step") -> Sealed:
        """Receive one sealed request and handle it; every failure becomes a precise status."""
        try:
            return self.handler.handle(receive())
        except WireFormatError as error:
            status = "RESOURCE_EXHAUSTED" if error.code == "too_large" else "INVALID_ARGUMENT"
            self._abort(context, ServiceError(status, error.code, error.message), what)
        except ServiceError as error:
            self._abort(context, error, what)
        except grpc.RpcError:  # the stream was cancelled mid-message (deadline) or the peer went away
            self.refusals.warning("stream from %s cancelled mid-message (a gap over %.0fs, or gone)",
                                  peer_host(context.peer()), self.front_door.idle_s)
            raise
        except Exception:  # a bug must not take the server down, and must be visible
            log.exception("internal error while serving a step")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    def Close(self, request: pb.Sealed, context: grpc.ServicerContext) -> pb.Sealed:  # noqa: N802
        return to_wire(self._serve(lambda: from_wire(request), context, "close"))

    def parsed(self, message_type: type, raw: bytes, context: grpc.ServicerContext, what: str) -> Any:
        """``raw`` parsed as ``message_type`` here, in the handler, so that bytes that are no such
        message get INVALID_ARGUMENT like any other malformed request (gRPC's own deserializer would
        answer INTERNAL before any of our code ran)."""
        message = message_type()
        try:
            message.ParseFromString(raw)
        except DecodeError:
            self._abort(context, ServiceError("INVALID_ARGUMENT", "malformed", f"the {what} request is "
                                              f"not a {message_type.__name__} message"), what)
        return message

    def parsed_stream(self, raw: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[pb.Sealed]:
        for chunk in raw:
            yield self.parsed(pb.Sealed, chunk, context, "step")

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The service's methods, taking raw bytes that each method parses itself (see ``parsed``)."""
        reply = {name: getattr(pb, name).SerializeToString for name in ("HelloReply", "Sealed")}
        return {
            "Handshake": grpc.unary_unary_rpc_method_handler(
                lambda raw, context: self.Handshake(self.parsed(pb.Hello, raw, context, "handshake"),
                                                    context),
                response_serializer=reply["HelloReply"]),
            "Step": grpc.stream_stream_rpc_method_handler(
                lambda raw, context: self.Step(self.parsed_stream(raw, context), context),
                response_serializer=reply["Sealed"]),
            "Exchange": grpc.unary_unary_rpc_method_handler(
                lambda raw, context: self.Exchange(self.parsed(pb.Sealed, raw, context, "exchange"), context),
                response_serializer=reply["Sealed"]),
            "Close": grpc.unary_unary_rpc_method_handler(
                lambda raw, context: self.Close(self.parsed(pb.Sealed, raw, context, "close"), context),
                response_serializer=reply["Sealed"]),
        }

    def _abort(self, context: grpc.ServicerContext, error: ServiceError, what: str) -> None:
        peer = context.peer() if hasattr(context, "peer") else "?"
        self.refusals.warning("refused %s from %s: %s %s: %s", what, peer, error.status, error.code,
                              error.message)
        # the code travels typed, as ErrorInfo in the trailing metadata; the details stay readable
        info = pb.ErrorInfo(code=error.code, message=error.message[:MAX_ERROR_MESSAGE])
        context.set_trailing_metadata(((ERROR_METADATA_KEY, info.SerializeToString()),))
        context.abort(getattr(grpc.StatusCode, error.status, grpc.StatusCode.UNKNOWN),
                      f"{error.code}: {error.message}")


def serve(
    handler: TrunkHandler,
    address: str,
    tls: tuple[bytes, bytes] | None = None,
    allow_insecure_loopback: bool = False,
    max_message_bytes: int = 512 * 1024 * 1024,
    workers: int = 16,
    client_certificates: bytes | None = None,
    thread_initializer: Callable[[], None] | None = None,
    front_door: FrontDoorLimits | None = None,
) -> tuple[grpc.Server, int]:
    """Start serving ``handler`` at ``address`` with TLS (certificate, key) or, on loopback only and
    when asked explicitly, in plaintext. With ``client_certificates`` (PEM, concatenated) TLS is
    mutual: only clients presenting one of those certificates connect. Returns the started server and
    the bound port. At most ``workers`` requests run at once; more are refused at once with
    ``RESOURCE_EXHAUSTED`` (which clients read as busy and retry) rather than queued, where a
    handshake would age past its clock-skew window and a waiting backward would miss its step.
    ``thread_initializer`` runs once in each request thread as it starts."""
    if client_certificates is not None and tls is None:
        raise ValueError("mutual TLS needs the server's own TLS certificate and key")
    if tls is None:
        check_plaintext_allowed(address, allow_insecure_loopback)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trunk-rpc",
                                   initializer=thread_initializer),
        maximum_concurrent_rpcs=workers,
        options=SERVER_OPTIONS,
    )
    handlers = TrunkServicer(handler, max_message_bytes, front_door).method_handlers()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        certificate, key = tls
        credentials = grpc.ssl_server_credentials(
            [(key, certificate)], root_certificates=client_certificates,
            require_client_auth=client_certificates is not None)
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    mode = "mutual TLS" if client_certificates else "TLS" if tls else "plaintext, loopback only"
    log.info("trunk serving on %s (%s)", address, mode)
    return server, port
