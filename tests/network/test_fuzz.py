"""Property-based fuzzing of a live server: >= 1,000 malformed messages, no crash, no hang, no
unhandled exception, and the honest client trains on."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitfed.transport import pb
from splitfed.transport.errors import RemoteError
from tests.conftest import make_batch
from tests.network.test_refusals import Lab

EXPECTED_STATUSES = {"INVALID_ARGUMENT", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED",
                     "FAILED_PRECONDITION"}
KINDS = st.sampled_from(["forward", "backward", "close", "forward_reply", "error", "", "x" * 300])
SENT = {"count": 0}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


SERVER_ERRORS = _Collect()


@pytest.fixture(scope="module")
def lab():
    logging.getLogger().addHandler(SERVER_ERRORS)
    lab = Lab()
    yield lab
    lab.server.stop(0)
    logging.getLogger().removeHandler(SERVER_ERRORS)


@pytest.fixture(scope="module")
def attacker(lab):
    return lab.session(lab.people["mallory"])


def _expect_refusal(send) -> None:
    SENT["count"] += 1
    try:
        send()
    except RemoteError as error:
        assert error.status in EXPECTED_STATUSES, (error.status, error.message)


FUZZ = settings(max_examples=350, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(session=st.binary(max_size=40), kind=KINDS, step=st.integers(0, 2**64 - 1),
       counter=st.integers(0, 2**64 - 1), ciphertext=st.binary(max_size=300),
       index=st.integers(0, 3), count=st.integers(0, 3))
def test_random_envelopes(lab, attacker, session, kind, step, counter, ciphertext, index, count):
    connection, channel = attacker
    if session[:1] == b"\x01":
        session = channel.session_id  # sometimes a live session id, so decryption is really tried
    message = pb.Sealed(session_id=session, kind=kind, step=step, counter=counter, ciphertext=ciphertext,
                        chunk_index=index, chunk_count=count)
    _expect_refusal(lambda: connection.exchange_chunks([message]))


@FUZZ
@given(kind=KINDS, payload=st.binary(max_size=400), step=st.integers(0, 10))
def test_authentic_envelopes_with_garbage_payloads(lab, attacker, kind, payload, step):
    connection, channel = attacker
    sealed = channel.seal(kind[:64] or "forward", step, payload)
    _expect_refusal(lambda: connection.exchange(sealed))


dims = st.integers(-3, 70)


@FUZZ
@given(dtype=st.sampled_from(["float32", "bfloat16", "float16", "int8-blockwise", "int8", "float64", ""]),
       shape=st.lists(dims, min_size=0, max_size=4), data=st.binary(max_size=2048),
       scales=st.binary(max_size=64), block_size=st.integers(-1, 70),
       lengths=st.lists(st.integers(-2, 70), max_size=4), pads=st.lists(st.integers(-2, 70), max_size=4),
       past=st.integers(-5, 10**12), train=st.booleans())
def test_structured_forwards_with_bad_fields(lab, attacker, dtype, shape, data, scales, block_size, lengths,
                                             pads, past, train):
    connection, channel = attacker
    hidden = pb.Tensor(dtype=dtype, shape=shape, data=data, scales=scales, block_size=block_size)
    request = pb.ForwardRequest(step=1, hidden=hidden,
                                lengths=pb.Lengths(lengths=lengths, left_padding=pads, past_length=past),
                                train=train)
    sealed = channel.seal("forward", 1, request.SerializeToString())
    _expect_refusal(lambda: connection.exchange(sealed))
    lab.service.reap(now=float("inf"))  # a forward that happened to be valid must not hold the trunk


def test_after_the_fuzzing_the_server_is_healthy(lab):
    assert SENT["count"] >= 1000
    honest = lab.honest_client()
    losses = [honest.train_step(make_batch(batch=2, length=10, seed=s)) for s in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not SERVER_ERRORS.records, [r.getMessage() for r in SERVER_ERRORS.records][:5]
