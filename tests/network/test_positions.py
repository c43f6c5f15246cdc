"""Sequences longer than the model's positions are refused with their own code, for training, eval and
generation (the server's ``max_length`` alone allowed 2,048 on a 1,024-position model)."""

from __future__ import annotations

import pytest
import torch

from splitfed.server.service_parts import ServiceLimits
from splitfed.transport import encode_tensor, mask_to_lengths, pb
from splitfed.transport.envelope import chunk_message
from splitfed.transport.errors import RemoteError
from tests.network.test_refusals import HIDDEN, Lab

POSITIONS = 1024  # tiny-llama's max_position_embeddings


@pytest.fixture(scope="module")
def lab():
    lab = Lab(ServiceLimits(max_batch=2, max_length=2048, step_timeout_s=5.0, turn_timeout_s=20.0))
    yield lab
    lab.server.stop(0)


def _lengths(length: int, past: int = 0) -> pb.Lengths:
    lengths = mask_to_lengths(torch.ones(1, length, dtype=torch.long))
    lengths.past_length = past
    return lengths


def _request(kind: str, length: int, past: int = 0):
    hidden = encode_tensor(torch.randn(1, length, HIDDEN))
    if kind == "generate":
        return pb.GenerateRequest(step=1, stream=0, hidden=hidden, lengths=_lengths(length, past),
                                  use_cache=True)
    return pb.ForwardRequest(step=1, hidden=hidden, lengths=_lengths(length), train=kind == "train")


def _send(lab, kind: str, request) -> bytes:
    connection, channel = lab.session(lab.people["alice"])
    wire_kind = "generate" if kind == "generate" else "forward"
    try:
        sealed = channel.seal(wire_kind, 1, request.SerializeToString())
        return channel.open(connection.exchange_chunks(list(chunk_message(sealed))))
    finally:
        connection.close()


@pytest.mark.parametrize("kind", ["train", "eval", "generate"])
@pytest.mark.parametrize("length", [POSITIONS + 1, 2048])
def test_sequences_past_the_models_positions_are_refused(lab, kind, length):
    with pytest.raises(RemoteError) as refused:
        _send(lab, kind, _request(kind, length))
    assert refused.value.status == "INVALID_ARGUMENT", refused.value
    assert "beyond_positions" in refused.value.message and str(POSITIONS) in refused.value.message


def test_a_cache_plus_new_tokens_past_the_positions_is_refused(lab):
    with pytest.raises(RemoteError) as refused:
        _send(lab, "generate", _request("generate", 8, past=POSITIONS - 4))
    assert "beyond_positions" in refused.value.message


def test_the_session_limits_say_the_models_positions(lab):
    assert lab.service.session_limits().max_length == POSITIONS


@pytest.mark.parametrize("kind", ["eval", "generate"])
def test_a_sequence_at_the_limit_is_served(lab, kind):
    reply = _send(lab, kind, _request(kind, POSITIONS))
    assert len(reply) > POSITIONS * HIDDEN  # the hidden states came back
