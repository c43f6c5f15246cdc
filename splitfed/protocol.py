"""Glue between the security layer (sealed messages) and the transport (protobuf on the wire)."""

from __future__ import annotations

from splitfed.security import Sealed
from splitfed.transport import pb


def to_wire(sealed: Sealed) -> pb.Sealed:
    """A sealed message as the protobuf that crosses the network (one chunk; chunking is later)."""
    return pb.Sealed(session_id=sealed.session_id, kind=sealed.kind, step=sealed.step,
                     counter=sealed.counter, ciphertext=sealed.ciphertext, chunk_index=0, chunk_count=1)


def from_wire(message: pb.Sealed) -> Sealed:
    """The security layer's view of a (reassembled) wire message; nothing is trusted yet."""
    return Sealed(session_id=bytes(message.session_id), kind=message.kind, step=int(message.step),
                  counter=int(message.counter), ciphertext=bytes(message.ciphertext))
