"""The client's gRPC connection to the trunk: pinned TLS, deadlines, chunking, clear errors."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from splitfed.layout import Layout
from splitfed.security import Sealed
from splitfed.transport import splitfed_pb2 as pb
from splitfed.transport import splitfed_pb2_grpc as pb_grpc
from splitfed.transport.addresses import check_plaintext_allowed
from splitfed.transport.envelope import GRPC_MESSAGE_LIMIT, chunk_message, reassemble, reply_fits_request
from splitfed.transport.errors import ERROR_METADATA_KEY, RemoteError


class TrunkConnection:
    """One channel to the trunk server. ``server_certificate`` pins the server's TLS certificate;
    without one, plaintext is allowed only to a loopback address when explicitly asked for."""

    def __init__(
        self,
        address: str,
        server_certificate: bytes | None = None,
        allow_insecure_loopback: bool = False,
        timeout_s: float = 300.0,
        max_message_bytes: int = 512 * 1024 * 1024,
        client_certificate: tuple[bytes, bytes] | None = None,
    ) -> None:
        options = [("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
                   ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT)]
        if server_certificate is None:
            check_plaintext_allowed(address, allow_insecure_loopback)
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            certificate, key = client_certificate if client_certificate is not None else (None, None)
            credentials = grpc.ssl_channel_credentials(root_certificates=server_certificate,
                                                       private_key=key, certificate_chain=certificate)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = pb_grpc.TrunkStub(self._channel)
        self.address = address
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self.bytes_sent = 0
        self.bytes_received = 0
        self.exchanges = 0  # round trips: one per message sent, unary or streamed
        self.layout: str = Layout.THREE_PART  # the server's (from the handshake): it bounds reply sizes

    def handshake(self, client_hello: bytes, base_id: str | None = None) -> pb.HelloReply:
        try:
            reply = self._stub.Handshake(pb.Hello(client_hello=client_hello, base_id=base_id or ""),
                                         timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise _remote_error(error, self.address) from None
        self.layout = reply.limits.layout or Layout.THREE_PART
        return reply

    def exchange(self, message: Sealed) -> Sealed:
        """Send one sealed message and return the server's sealed reply. A message that fits one gRPC
        message and whose reply is no larger (a tensor step) goes as one unary call, cheaper than a
        stream; anything else is chunked over the stream."""
        chunks = chunk_message(message)
        if len(chunks) != 1 or not reply_fits_request(message.kind, self.layout):
            return self.exchange_chunks(chunks)
        self.bytes_sent += chunks[0].ByteSize()
        self.exchanges += 1
        try:
            reply = self._stub.Exchange(chunks[0], timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise _remote_error(error, self.address) from None
        self.bytes_received += reply.ByteSize()
        if len(reply.ciphertext) > self.max_message_bytes:
            raise RemoteError("RESOURCE_EXHAUSTED", "the server's reply exceeds this client's limit",
                              "reply_too_large")
        return reassemble(iter([reply]), self.max_message_bytes)

    def exchange_chunks(self, chunks: list[pb.Sealed]) -> Sealed:
        """Send prepared chunks of one message as they are (no checks: for tests and tools)."""
        self.bytes_sent += sum(c.ByteSize() for c in chunks)
        self.exchanges += 1
        try:
            replies = list(self._stub.Step(iter(chunks), timeout=self.timeout_s))
        except grpc.RpcError as error:
            raise _remote_error(error, self.address) from None
        self.bytes_received += sum(r.ByteSize() for r in replies)
        return reassemble(iter(replies), self.max_message_bytes)

    def close(self) -> None:
        self._channel.close()


def _error_code(error: grpc.RpcError) -> str:
    """The server's typed refusal code (``ErrorInfo`` in the trailing metadata), or empty."""
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in metadata or ():
        if key == ERROR_METADATA_KEY and isinstance(value, bytes) and len(value) <= 4096:
            try:
                return pb.ErrorInfo.FromString(value).code[:64]
            except DecodeError:
                return ""
    return ""


def _remote_error(error: grpc.RpcError, address: str) -> RemoteError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "UNKNOWN"
    reason = _error_code(error)
    if name == "RESOURCE_EXHAUSTED" and not reason and details and "Concurrent RPC limit" in details:
        # every server thread is busy: transient, so reported like an unreachable server (retried)
        return RemoteError("UNAVAILABLE", f"busy: the trunk at {address} is serving as many requests "
                                          "as it has threads; retry", "busy")
    if name == "CANCELLED":
        # this client never cancels its calls: the server cancelled it while stopping (its grace period
        # ended with the call in flight), which is as transient as an unreachable server (retried)
        return RemoteError("UNAVAILABLE", f"the trunk at {address} cancelled the call while stopping; retry",
                           "cancelled")
    if name == "UNAVAILABLE" and not reason:
        details = f"cannot reach the trunk at {address}: {details}"
    return RemoteError(name, details or name, reason)
