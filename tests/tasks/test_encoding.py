"""encode_example / collate: answer-only labels, exact option ids, padding, truncation."""

from __future__ import annotations

import pytest
import torch

from splitfed.tasks import (
    IGNORE_INDEX,
    ClozeExample,
    collate,
    encode_example,
    encode_options,
    join_prompt_option,
    option_token_ids,
)

EX = ClozeExample("the cat sat on the mat ? answer :", [" yes", " no"], 1)


def test_encode_example_masks_prompt_and_keeps_answer(word_tokenizer) -> None:
    tok = word_tokenizer([EX.prompt, "yes no"])
    enc = encode_example(tok, EX)
    prompt_ids = tok(EX.prompt)["input_ids"]
    no_id = tok.convert_tokens_to_ids("no")
    assert prompt_ids[0] == tok.bos_token_id
    assert enc["input_ids"] == [*prompt_ids, no_id]
    assert enc["labels"] == [IGNORE_INDEX] * len(prompt_ids) + [no_id]


def test_encode_options_one_row_per_option(word_tokenizer) -> None:
    tok = word_tokenizer([EX.prompt, "yes no"])
    rows = encode_options(tok, EX)
    ids = [tok.convert_tokens_to_ids(w) for w in ("yes", "no")]
    assert [r["labels"][-1] for r in rows] == ids
    assert rows[0]["input_ids"][:-1] == rows[1]["input_ids"][:-1]
    assert rows[EX.label] == encode_example(tok, EX)


def test_multi_token_option(word_tokenizer) -> None:
    ex = ClozeExample('"a" or "b"? it rained, so', [" the grass got wet", " b"], 0)
    tok = word_tokenizer([ex.prompt, *ex.options])
    enc = encode_example(tok, ex)
    answer = tok.convert_tokens_to_ids(["the", "grass", "got", "wet"])
    assert enc["input_ids"][-4:] == answer
    assert enc["labels"][-4:] == answer
    assert set(enc["labels"][:-4]) == {IGNORE_INDEX}


def test_left_truncation_keeps_bos_and_answer(word_tokenizer) -> None:
    tok = word_tokenizer([EX.prompt, "yes no"])
    full = encode_example(tok, EX)
    enc = encode_example(tok, EX, max_length=5)
    assert len(enc["input_ids"]) == 5
    # BOS, then the last 3 prompt tokens ("?", "answer", ":"), then the answer.
    assert enc["input_ids"] == [tok.bos_token_id, *full["input_ids"][-4:]]
    assert enc["labels"] == [IGNORE_INDEX] * 4 + [tok.convert_tokens_to_ids("no")]
    assert encode_example(tok, EX, max_length=len(full["input_ids"])) == full


def test_truncation_without_bos_and_too_short() -> None:
    enc = join_prompt_option([10, 11, 12, 13], [7, 8], max_length=4)
    assert enc == {"input_ids": [12, 13, 7, 8], "labels": [-100, -100, 7, 8]}
    enc = join_prompt_option([1, 11, 12, 13], [7, 8], max_length=3, bos_token_id=1)
    assert enc["input_ids"] == [13, 7, 8]  # budget 1: no room for BOS and context
    with pytest.raises(ValueError):
        join_prompt_option([1, 2], [7, 8], max_length=2)
    with pytest.raises(ValueError):
        join_prompt_option([1, 2], [], max_length=8)


class SentencePieceLike:
    """Character tokenizer that, like SentencePiece, prefixes a lone text with '▁'."""

    bos_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord("▁")] + [ord(c) for c in text.replace(" ", "▁")]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def test_option_ids_are_the_joint_suffix_without_spurious_prefix() -> None:
    tok = SentencePieceLike()
    prompt_ids = tok("Answer:")["input_ids"]
    assert tok(" yes", add_special_tokens=False)["input_ids"][:2] == [ord("▁")] * 2
    assert option_token_ids(tok, "Answer:", prompt_ids, " yes") == [ord(c) for c in "▁yes"]


class MergingTokenizer:
    """Whole-string tokenizer: the joint text never starts with the prompt's ids."""

    bos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [hash(text) % 1000]}


def test_option_ids_fall_back_to_separate_tokenization() -> None:
    tok = MergingTokenizer()
    prompt_ids = tok("Answer:")["input_ids"]
    assert option_token_ids(tok, "Answer:", prompt_ids, " yes") == tok(" yes")["input_ids"]


BATCH = [
    {"input_ids": [5, 6, 7], "labels": [-100, -100, 7]},
    {"input_ids": [5, 8], "labels": [-100, 8]},
]


def test_collate_left_padding() -> None:
    out = collate(BATCH, pad_token_id=0)
    assert torch.equal(out["input_ids"], torch.tensor([[5, 6, 7], [0, 5, 8]]))
    assert torch.equal(out["attention_mask"], torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert torch.equal(out["labels"], torch.tensor([[-100, -100, 7], [-100, -100, 8]]))
    assert all(t.dtype == torch.int64 for t in out.values())


def test_collate_right_padding_and_errors() -> None:
    out = collate(BATCH, pad_token_id=9, padding_side="right")
    assert torch.equal(out["input_ids"], torch.tensor([[5, 6, 7], [5, 8, 9]]))
    assert torch.equal(out["attention_mask"], torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(out["labels"], torch.tensor([[-100, -100, 7], [-100, 8, -100]]))
    with pytest.raises(ValueError):
        collate(BATCH, 0, padding_side="middle")
    with pytest.raises(ValueError):
        collate([], 0)
    with pytest.raises(ValueError):
        collate([{"input_ids": [1, 2], "labels": [1]}], 0)
