"""Payload parsing and a full forward request through serialization."""

from __future__ import annotations

import pytest
import torch

from splitfed.transport import (
    PAYLOAD_KINDS,
    WIRE_DTYPES,
    TensorLimits,
    WireFormatError,
    decode_tensor,
    encode_tensor,
    lengths_to_mask,
    mask_to_lengths,
    parse_payload,
    pb,
)


def test_forward_request_round_trip():
    hidden = torch.randn(3, 7, 16)
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5, [0] * 6 + [1]])
    request = pb.ForwardRequest(
        step=42, hidden=encode_tensor(hidden), lengths=mask_to_lengths(mask), train=True
    )
    received = parse_payload("forward", request.SerializeToString())
    assert isinstance(received, pb.ForwardRequest) and received.step == 42 and received.train
    limits = TensorLimits(frozenset(WIRE_DTYPES), max_elements=10_000, max_bytes=40_000)
    decoded = decode_tensor(received.hidden, limits, expected_shape=(None, None, 16))
    assert torch.equal(decoded, hidden)
    rebuilt = lengths_to_mask(received.lengths, decoded.shape[1], batch_size=decoded.shape[0])
    assert torch.equal(rebuilt, mask)


@pytest.mark.parametrize("kind", sorted(PAYLOAD_KINDS))
def test_every_kind_parses_its_message(kind):
    message = PAYLOAD_KINDS[kind]()
    assert type(parse_payload(kind, message.SerializeToString())) is PAYLOAD_KINDS[kind]


def test_unknown_kind_and_garbage_are_wire_errors():
    with pytest.raises(WireFormatError) as info:
        parse_payload("pickle", b"")
    assert info.value.code == "bad_kind"
    with pytest.raises(WireFormatError) as info:
        parse_payload("forward", b"\x0a\xff\xff\xff\xff\x0f")
    assert info.value.code == "bad_message"
