"""Parsing and answering the FedAvg round messages (plain and secure aggregation), checked before use."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from splitfed.aggregation.secure_rounds import ADVERTISE, MASKED, REVEAL, SHARE
from splitfed.transport import WireFormatError, decode_int64, encode_tensor, pb

MAX_ADAPTER_TENSORS = 10_000
MAX_SECAGG_BLOB = 1 << 16


def check_weight(weight: float) -> None:
    if not (math.isfinite(weight) and weight > 0):
        raise WireFormatError("bad_weight", "the FedAvg weight must be a positive number")


def adapter_tensors(items: Iterable[Any], decode: Callable[[Any], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Named adapter tensors of a round message: at most MAX_ADAPTER_TENSORS, unique 1-512 char names."""
    items = list(items)
    if len(items) > MAX_ADAPTER_TENSORS:
        raise WireFormatError("too_large", f"more than {MAX_ADAPTER_TENSORS} adapter tensors")
    tensors: dict[str, torch.Tensor] = {}
    for item in items:
        if not item.name or len(item.name) > 512 or item.name in tensors:
            raise WireFormatError("bad_name", "adapter tensor names must be unique, 1-512 characters")
        tensors[item.name] = decode(item.tensor)
    return tensors


def secagg_value(request: pb.SecAggRequest, max_elements: int) -> object:
    """What a secure-aggregation phase submits: public keys, shares, or masked tensors with weight."""
    phase = request.phase
    shares = request.shares.items()
    if len(shares) > MAX_ADAPTER_TENSORS or any(
            len(blob) > MAX_SECAGG_BLOB or not 0 < len(name) <= 256 for name, blob in shares):
        raise WireFormatError("too_large", "too many or too large secure-aggregation shares")
    if phase == ADVERTISE:
        return bytes(request.keys)
    if phase in (SHARE, REVEAL):
        return {name: bytes(blob) for name, blob in shares}
    if phase == MASKED:
        check_weight(request.weight)
        return adapter_tensors(request.tensors, lambda wire: decode_int64(wire, max_elements)), request.weight
    raise WireFormatError("bad_phase", f"unknown secure-aggregation phase {phase}")


def add_average(reply: Any, average: dict[str, torch.Tensor]) -> None:
    for name in sorted(average):
        reply.tensors.add(name=name, tensor=encode_tensor(average[name], "float32"))


def secagg_reply(request: pb.SecAggRequest, result: Any) -> pb.SecAggReply:
    """The reply to one phase, from what the round barrier returned."""
    phase = request.phase
    reply = pb.SecAggReply(step=request.step, round=request.round, phase=phase)
    if phase == ADVERTISE:
        reply.roster, reply.threshold = result
        reply.contributors = 0 if result[0] else 1
    elif phase == SHARE:
        shares, reply.weight = result
        reply.shares.update(shares)
    elif phase == MASKED:
        reply.survivors.extend(result[0])
        reply.dropped.extend(result[1])
    else:
        average, reply.contributors = result
        add_average(reply, average)
    return reply
