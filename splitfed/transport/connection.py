"""The client's gRPC connection to the trunk: pinned TLS, deadlines, chunking, clear errors."""

from __future__ import annotations

import grpc

from splitfed.transport import splitfed_pb2 as pb
from splitfed.transport import splitfed_pb2_grpc as pb_grpc
from splitfed.transport.addresses import check_plaintext_allowed
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import GRPC_MESSAGE_LIMIT, chunk_message, reassemble


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

    def handshake(self, client_hello: bytes) -> pb.HelloReply:
        try:
            return self._stub.Handshake(pb.Hello(client_hello=client_hello), timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise _remote_error(error, self.address) from None

    def exchange(self, message: pb.Sealed, same_size_reply: bool = False) -> pb.Sealed:
        """Send one sealed message and return the server's sealed reply. ``same_size_reply``: the reply
        is about as large as the message (a tensor step), so one that fits a single gRPC message goes
        as one unary call, cheaper than a stream; anything else is chunked over the stream."""
        chunks = chunk_message(message)
        if not same_size_reply or len(chunks) != 1:
            return self.exchange_chunks(chunks)
        self.bytes_sent += chunks[0].ByteSize()
        try:
            reply = self._stub.Exchange(chunks[0], timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise _remote_error(error, self.address) from None
        self.bytes_received += reply.ByteSize()
        if len(reply.ciphertext) > self.max_message_bytes:
            raise RemoteError("RESOURCE_EXHAUSTED", "the server's reply exceeds this client's limit")
        return reply

    def exchange_chunks(self, chunks: list[pb.Sealed]) -> pb.Sealed:
        """Send prepared chunks of one message as they are (no checks: for tests and tools)."""
        self.bytes_sent += sum(c.ByteSize() for c in chunks)
        try:
            replies = list(self._stub.Step(iter(chunks), timeout=self.timeout_s))
        except grpc.RpcError as error:
            raise _remote_error(error, self.address) from None
        self.bytes_received += sum(r.ByteSize() for r in replies)
        return reassemble(iter(replies), self.max_message_bytes)

    def close(self) -> None:
        self._channel.close()


def _remote_error(error: grpc.RpcError, address: str) -> RemoteError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "UNKNOWN"
    if name == "RESOURCE_EXHAUSTED" and details and "Concurrent RPC limit" in details:
        # every server thread is busy: transient, so reported like an unreachable server (retried)
        return RemoteError("UNAVAILABLE", f"busy: the trunk at {address} is serving as many requests "
                                          "as it has threads; retry")
    if name == "CANCELLED":
        # this client never cancels its calls: the server cancelled it while stopping (its grace period
        # ended with the call in flight), which is as transient as an unreachable server (retried)
        return RemoteError("UNAVAILABLE", f"the trunk at {address} cancelled the call while stopping; retry")
    if name == "UNAVAILABLE":
        details = f"cannot reach the trunk at {address}: {details}"
    return RemoteError(name, details or name)
