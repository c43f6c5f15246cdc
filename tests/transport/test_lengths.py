"""Attention masks travel as per-row lengths and left padding, and are rebuilt exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfed.transport import WireFormatError, lengths_to_mask, mask_to_lengths, pb


@st.composite
def left_padded(draw) -> tuple[torch.Tensor, int]:
    """A random left-padded 0/1 mask (batch, past + seq) and its past length."""
    total = draw(st.integers(1, 24))
    past = draw(st.integers(0, total - 1))
    rows = draw(st.lists(st.integers(0, total), min_size=1, max_size=6))
    mask = torch.tensor([[0] * (total - n) + [1] * n for n in rows])
    return mask, past


@settings(max_examples=300, deadline=None)
@given(case=left_padded(), dtype=st.sampled_from([torch.int64, torch.int32, torch.bool, torch.float32]))
def test_round_trip_is_exact(case, dtype):
    mask, past = case
    lengths = mask_to_lengths(mask.to(dtype), past_length=past)
    assert list(lengths.lengths) == mask.sum(1).tolist()
    wire = pb.Lengths.FromString(lengths.SerializeToString())
    rebuilt = lengths_to_mask(wire, seq_len=mask.shape[1] - past, batch_size=mask.shape[0])
    assert rebuilt.dtype == torch.int64 and torch.equal(rebuilt, mask)


def test_decode_step_mask_covers_past_and_new_token():
    lengths = pb.Lengths(lengths=[5, 3], left_padding=[0, 2], past_length=4)
    mask = lengths_to_mask(lengths, seq_len=1)
    assert torch.equal(mask, torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]))


@pytest.mark.parametrize(
    ("lengths", "seq_len", "batch_size", "code"),
    [
        (pb.Lengths(lengths=[3, 2], left_padding=[0]), 3, None, "bad_lengths"),
        (pb.Lengths(lengths=[3], left_padding=[0]), 3, 2, "bad_lengths"),
        (pb.Lengths(), 3, None, "bad_lengths"),
        (pb.Lengths(lengths=[4], left_padding=[-1]), 3, None, "bad_lengths"),
        (pb.Lengths(lengths=[-1], left_padding=[4]), 3, None, "bad_lengths"),
        (pb.Lengths(lengths=[2], left_padding=[0]), 3, None, "bad_lengths"),
        (pb.Lengths(lengths=[3], left_padding=[0], past_length=1), 3, None, "bad_lengths"),
        (pb.Lengths(lengths=[3], left_padding=[0], past_length=-1), 4, None, "bad_lengths"),
        (pb.Lengths(lengths=[1], left_padding=[0], past_length=10**15), 1, None, "too_large"),
        (pb.Lengths(lengths=[1] * 5000, left_padding=[0] * 5000), 1, None, "too_large"),
    ],
)
def test_inconsistent_lengths_are_rejected(lengths, seq_len, batch_size, code):
    with pytest.raises(WireFormatError) as info:
        lengths_to_mask(lengths, seq_len, batch_size=batch_size)
    assert info.value.code == code


def test_limits_are_configurable():
    lengths = pb.Lengths(lengths=[8, 8], left_padding=[0, 0])
    assert lengths_to_mask(lengths, 8, max_batch=2, max_length=8).shape == (2, 8)
    for kwargs in ({"max_batch": 1}, {"max_length": 7}):
        with pytest.raises(WireFormatError) as info:
            lengths_to_mask(lengths, 8, **kwargs)
        assert info.value.code == "too_large"


@pytest.mark.parametrize(
    ("mask", "past"),
    [
        (torch.tensor([1, 1, 0]), 0),
        (torch.tensor([[1, 1, 0]]), 0),
        (torch.tensor([[0, 2, 1]]), 0),
        (torch.tensor([[0, 1, 1]]), 3),
        (torch.tensor([[0, 1, 1]]), -1),
        (torch.zeros(0, 3, dtype=torch.int64), 0),
    ],
)
def test_masks_that_are_not_left_padded_are_rejected(mask, past):
    with pytest.raises(WireFormatError) as info:
        mask_to_lengths(mask, past_length=past)
    assert info.value.code == "bad_mask"
