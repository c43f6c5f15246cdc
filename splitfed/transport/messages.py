"""Payload kinds carried in ``Sealed.kind`` and safe parsing of decrypted payload bytes."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from splitfed.transport import splitfed_pb2 as pb
from splitfed.transport.errors import WireFormatError

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

