"""The one envelope and what it carries: a ``splitfed.security.Sealed`` message everywhere above this
package; here, the protobuf ``Sealed`` gRPC carries, cut into chunks that each fit one gRPC message and
put back together, and the payload message each ``Sealed.kind`` holds, parsed safely once decrypted.

Nothing outside ``splitfed.transport`` sees the protobuf envelope or a chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from splitfed.layout import Layout
from splitfed.security import Sealed
from splitfed.transport import splitfed_pb2 as pb
from splitfed.transport.chunking import DEFAULT_CHUNK_BYTES, Reassembler, split_bytes
from splitfed.transport.errors import WireFormatError

GRPC_MESSAGE_LIMIT = 4 * 1024 * 1024 + 64 * 1024  # one chunk plus headroom, both directions

SAME_SIZE_REPLY = frozenset({"forward", "backward", "generate", "loss"})  # tensor steps


def reply_fits_request(kind: str, layout: str) -> bool:
    """Whether the reply to a ``kind`` request is no larger than the request (a tensor step), so that a
    request fitting one gRPC message may go as one unary call. Two-part generation is the exception:
    it answers with logits (B, 1, V), which can be far larger than the hidden state sent."""
    if kind == "generate" and layout == Layout.TWO_PART:
        return False
    return kind in SAME_SIZE_REPLY


def to_wire(sealed: Sealed) -> pb.Sealed:
    """``sealed`` as one protobuf message (one chunk)."""
    return pb.Sealed(session_id=sealed.session_id, kind=sealed.kind, step=sealed.step,
                     counter=sealed.counter, ciphertext=sealed.ciphertext, chunk_index=0, chunk_count=1)


def from_wire(message: pb.Sealed) -> Sealed:
    """The security layer's view of a (reassembled) wire message; nothing is trusted yet."""
    return Sealed(session_id=bytes(message.session_id), kind=message.kind, step=int(message.step),
                  counter=int(message.counter), ciphertext=bytes(message.ciphertext))


def chunk_message(sealed: Sealed, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[pb.Sealed]:
    """``sealed`` as chunks that each fit a gRPC message."""
    pieces = split_bytes(sealed.ciphertext, chunk_bytes)
    return [
        pb.Sealed(session_id=sealed.session_id, kind=sealed.kind, step=sealed.step,
                  counter=sealed.counter, ciphertext=piece, chunk_index=index, chunk_count=len(pieces))
        for index, piece in enumerate(pieces)
    ]


def reassemble(chunks: Iterator[pb.Sealed], max_total_bytes: int) -> Sealed:
    """The one sealed message carried by ``chunks`` (all with the same header)."""
    assembler = Reassembler(max_total_bytes)
    first: pb.Sealed | None = None
    for chunk in chunks:
        if first is None:
            first = chunk
        elif (chunk.session_id, chunk.kind, chunk.step, chunk.counter) != (
                first.session_id, first.kind, first.step, first.counter):
            raise WireFormatError("bad_chunk", "chunks of one message carry different headers")
        data = assembler.add(chunk.chunk_index, chunk.chunk_count, chunk.ciphertext)
        if data is not None:
            return Sealed(session_id=bytes(first.session_id), kind=first.kind, step=int(first.step),
                          counter=int(first.counter), ciphertext=data)
    raise WireFormatError("bad_chunk", "the message ended before its last chunk")


# ------------------------------------------------------------------------------------------- payloads

PAYLOAD_KINDS: dict[str, type[Message]] = {
    "forward": pb.ForwardRequest,
    "forward_reply": pb.ForwardReply,
    "backward": pb.BackwardRequest,
    "backward_reply": pb.BackwardReply,
    "aggregate": pb.AggregateRequest,
    "aggregate_reply": pb.AggregateReply,
    "secagg": pb.SecAggRequest,
    "secagg_reply": pb.SecAggReply,
    "generate": pb.GenerateRequest,
    "generate_reply": pb.GenerateReply,
    "loss": pb.LossRequest,
    "loss_reply": pb.LossReply,
    "error": pb.ErrorInfo,
}
"""``Sealed.kind`` -> the payload message inside it (``"close"`` carries an empty payload)."""

CLOSE_INTERRUPTED = b"interrupted"
"""Payload of a "close" from a client that stops before its end and will resume (otherwise empty)."""

M = TypeVar("M", bound=Message)


def parse_message(message_type: type[M], data: bytes) -> M:
    """Parse ``data`` as ``message_type``; malformed bytes raise ``WireFormatError("bad_message")``."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError) as error:
        raise WireFormatError("bad_message", f"not a valid {message_type.__name__}: {error}") from None
    return message


def parse_payload(kind: str, data: bytes) -> Message:
    """Parse a decrypted payload of the given ``Sealed.kind``; unknown kinds raise ``bad_kind``."""
    message_type = PAYLOAD_KINDS.get(kind)
    if message_type is None:
        raise WireFormatError(
            "bad_kind", f"unknown payload kind {kind[:32]!r}; known: {sorted(PAYLOAD_KINDS)}"
        )
    return parse_message(message_type, data)

