"""The client's wire settings, error feedback on the gradient it sends, the codecs at an in-process cut."""

from __future__ import annotations

import pytest
import torch

from splitfed.client import SplitClient
from splitfed.client.settings import ClientSettings, WireSettings
from splitfed.client.two_part_client import TwoPartClient
from splitfed.client.wire import CodecTrunk, ErrorFeedback, error_feedback, wire_codecs
from splitfed.models import LoraSpec, init_adapter, load_model, split_model
from splitfed.models.split import Partition
from splitfed.server import LocalTrunk
from splitfed.training.replicate import replicate
from splitfed.transport import INT8_BLOCKWISE, Codec
from tests.conftest import make_batch

REQUIRED = {"name": "alice", "identity": "alice.key", "server_key": "server.pub"}
INT8 = Codec(INT8_BLOCKWISE, 64)


def test_wire_dtype_is_the_shorthand_for_both_directions():
    assert ClientSettings(**REQUIRED).wire_settings() == WireSettings()
    shorthand = ClientSettings(**REQUIRED, wire_dtype=INT8_BLOCKWISE).wire_settings()
    assert (shorthand.forward, shorthand.backward) == (INT8_BLOCKWISE, INT8_BLOCKWISE)
    assert not shorthand.error_feedback
    wire = {"forward": INT8_BLOCKWISE, "backward": "bfloat16", "block_size": 128, "error_feedback": True}
    settings = ClientSettings(**REQUIRED, wire=wire)
    forward, backward = wire_codecs(settings.wire_settings())
    assert forward == Codec(INT8_BLOCKWISE, 128) and backward == Codec("bfloat16", 128)
    assert isinstance(error_feedback(settings.wire_settings()), ErrorFeedback)
    assert error_feedback(WireSettings(error_feedback=True)) is None  # float32: nothing is lost
    assert error_feedback(WireSettings(backward=INT8_BLOCKWISE)) is None  # off unless asked


@pytest.mark.parametrize(("extra", "match"), [
    ({"wire_dtype": "bfloat16", "wire": {"forward": "float16"}}, "not both"),
    ({"wire": {"forward": INT8_BLOCKWISE}, "partition": {"layout": "two-part"}}, "two-part"),
    ({"wire": {"forward": INT8_BLOCKWISE, "backward": INT8_BLOCKWISE, "error_feedback": True},
      "partition": {"layout": "two-part"}}, "two-part"),
    ({"wire": {"block_size": 4}}, "block_size"),
    ({"wire": {"forward": "int4"}}, "forward"),
    ({"wire_dtype": "float64"}, "wire_dtype"),
])
def test_inconsistent_wire_settings_are_refused(extra, match):
    with pytest.raises(ValueError, match=match):
        ClientSettings(**REQUIRED, **extra)


def _gradient(mask: torch.Tensor, hidden: int = 64, seed: int = 0) -> torch.Tensor:
    """A gradient-sized tensor (about 1e-3) that is zero at the padding, as the tail's gradient is."""
    grad = torch.randn(*mask.shape, hidden, generator=torch.Generator().manual_seed(seed)) * 1e-3
    return grad * mask[..., None]


def test_error_feedback_keeps_repeated_steps_on_the_true_gradient():
    batch = make_batch(batch=3, length=10)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    grad = _gradient(mask)
    bound = float(grad.abs().amax(dim=-1).max()) / 254  # half an int8 step of the largest block
    steps = 64
    feedback = ErrorFeedback(INT8, 1 << 20)
    plain_sum, fed_sum = torch.zeros_like(grad), torch.zeros_like(grad)
    worst_accumulated = 0.0
    for step in range(1, steps + 1):
        plain_sum += INT8.round_trip(grad)
        fed_sum += INT8.round_trip(feedback.compensate(grad, ids, mask))  # what the server decodes
        worst_accumulated = max(worst_accumulated, float((fed_sum - step * grad).abs().max()))
    plain_error = float((plain_sum / steps - grad).abs().max())
    fed_error = float((fed_sum / steps - grad).abs().max())
    # with feedback the accumulated error is one residual, at most half a step (of the compensated block)
    assert worst_accumulated <= bound * 1.01
    # without it every step repeats the same rounding: the accumulated error grows with the steps
    assert float((plain_sum - steps * grad).abs().max()) >= 0.5 * steps * plain_error > 10 * bound
    # so the mean of what the server got converges to the true gradient as 1 / steps, and is far closer
    assert fed_error <= bound * 1.01 / steps
    assert fed_error < plain_error / 20
    assert feedback.rows == 3 * steps and feedback.applied == 3 * (steps - 1)


def test_error_feedback_follows_each_example_across_batches_and_padding():
    hidden = 64  # one int8 block per position: an example's error does not depend on its neighbours
    short, long = torch.arange(10, 15), torch.arange(20, 29)
    other = torch.arange(40, 52)
    grads = {int(t[0]): torch.randn(len(t), hidden) * 1e-3 for t in (short, long, other)}

    def batch(*rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        grad = torch.zeros(len(rows), width, hidden)
        for i, r in enumerate(rows):  # left padding, as the client's batches
            ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
            grad[i, width - len(r):] = grads[int(r[0])]
        return grad, ids, mask

    feedback = ErrorFeedback(INT8, 1 << 20)
    grad, ids, mask = batch(short, long)
    sent = feedback.compensate(grad, ids, mask)
    assert torch.equal(sent, grad)  # nothing to add yet
    residual_of_short = (sent - INT8.round_trip(sent))[0, -5:]
    assert float(residual_of_short.abs().max()) > 0
    grad, ids, mask = batch(other, short)  # `short` comes back in another row, under more padding
    sent = feedback.compensate(grad, ids, mask)
    assert torch.allclose(sent[1, -5:], grads[10] + residual_of_short, atol=0, rtol=1e-6)
    assert torch.equal(sent[0], grad[0]) and torch.equal(sent[1, :-5], torch.zeros(7, hidden))
    assert (feedback.rows, feedback.applied) == (4, 1)


def test_error_feedback_memory_is_bounded():
    per_example = 10 * 64 * 4
    feedback = ErrorFeedback(INT8, max_bytes=3 * per_example)
    for seed in range(6):
        ids = torch.randint(3, 200, (1, 10), generator=torch.Generator().manual_seed(seed))
        feedback.compensate(_gradient(torch.ones(1, 10), seed=seed), ids, None)
        assert feedback.bytes <= 3 * per_example
    assert len(feedback._residuals) == 3 and feedback.bytes == 3 * per_example


def test_a_two_part_client_refuses_error_feedback():
    with pytest.raises(ValueError, match="sends none"):
        TwoPartClient("a", torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), None,  # type: ignore[arg-type]
                      feedback=ErrorFeedback(INT8, 1 << 20))


@pytest.fixture(scope="module")
def tiny_split():
    model, _ = load_model("tiny-llama")
    return model


def _client(model, trunk_codecs: tuple[Codec, Codec] | None, feedback: ErrorFeedback | None = None):
    split = split_model(replicate(model), Partition(1, 1))
    for part in split.parts.values():
        init_adapter(part, LoraSpec(r=2), 0)
    local = LocalTrunk(split.trunk)
    trunk = local if trunk_codecs is None else CodecTrunk(local, *trunk_codecs)
    return SplitClient("alice", split.head, split.tail, trunk, feedback=feedback), trunk


def test_codecs_at_an_in_process_cut(tiny_split):
    batch = make_batch(batch=3, length=14)
    exact, _ = _client(tiny_split, None)
    lossless, _ = _client(tiny_split, (Codec(), Codec()))
    assert torch.equal(lossless.logits(batch["input_ids"], batch["attention_mask"]),
                       exact.logits(batch["input_ids"], batch["attention_mask"]))
    quantized, trunk = _client(tiny_split, (INT8, INT8))
    reference = exact.logits(batch["input_ids"], batch["attention_mask"])
    logits = quantized.logits(batch["input_ids"], batch["attention_mask"])
    assert 0 < float((logits - reference).abs().max()) < 0.05 * float(reference.abs().max())
    loss_exact = exact.train_step(batch)
    loss = quantized.train_step(batch)
    assert abs(loss - loss_exact) < 0.01 * loss_exact
    per_token = trunk.bytes_per_token()
    assert set(per_token) == set(CodecTrunk.KEYS)
    hidden = 64
    assert all(hidden <= value <= 1.1 * hidden for value in per_token.values())  # 1.0625 + the header


def test_a_split_client_sends_its_gradient_through_error_feedback(tiny_split):
    feedback = ErrorFeedback(INT8, 1 << 20)
    client, _ = _client(tiny_split, (Codec(), INT8), feedback)
    batch = make_batch(batch=3, length=14)
    for _ in range(3):
        assert torch.isfinite(torch.tensor(client.train_step(batch)))
    assert (feedback.rows, feedback.applied) == (9, 6) and feedback.bytes > 0


def test_a_client_keeps_one_partition():
    with pytest.raises(ValueError, match="server settings"):
        ClientSettings(**REQUIRED, partition={"head": [1, 2], "tail": 1})
