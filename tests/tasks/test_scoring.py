"""score_options / evaluate_cloze on a tiny random Llama and on hand-made logits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from splitfed.tasks import (
    ClozeExample,
    answer_logprobs,
    encode_options,
    evaluate_cloze,
    score_options,
)

EXAMPLES = [
    ClozeExample("the film was long . Question : was it short ? Answer :", [" yes", " no"], 1),
    ClozeExample("rain fell", [" yes", " no", " maybe"], 2),
    ClozeExample(
        '" the glass broke " or " the glass shone "? I dropped a glass , so',
        [" the glass broke", " the glass shone in the light of the sun"],
        0,
    ),
    ClozeExample("a b c d e f g h i j k l m n o p", [" yes", " no"], 0),
]


def _logits_fn(model):
    def fn(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    return fn


@pytest.fixture
def setup(word_tokenizer, tiny_llama):
    tok = word_tokenizer([t for ex in EXAMPLES for t in (ex.prompt, *ex.options)])
    return tok, tiny_llama(len(tok))


def _reference(model, tok, examples) -> list[list[float]]:
    """One unpadded pair at a time, log-probs summed by hand."""
    out = []
    for ex in examples:
        row = []
        for enc in encode_options(tok, ex):
            ids = torch.tensor([enc["input_ids"]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            start = sum(label == -100 for label in enc["labels"])
            row.append(sum(float(logp[t - 1, ids[0, t]]) for t in range(start, ids.shape[1])))
        out.append(row)
    return out


def test_batched_left_padded_scores_equal_unpadded(setup) -> None:
    tok, model = setup
    fn = _logits_fn(model)
    batched = score_options(fn, tok, EXAMPLES, batch_size=4)
    single = score_options(fn, tok, EXAMPLES, batch_size=1)
    reference = _reference(model, tok, EXAMPLES)
    assert [len(s) for s in batched] == [2, 3, 2, 2]
    flat = [
        (b, s, r)
        for xb, xs, xr in zip(batched, single, reference, strict=True)
        for b, s, r in zip(xb, xs, xr, strict=True)
    ]
    for b, s, r in flat:
        assert b < 0
        assert abs(b - s) <= 1e-5
        assert abs(s - r) <= 1e-4  # float32 model vs float64 softmax
    # scores differ between options, so the check above is not vacuous
    assert len({round(b, 4) for b, _, _ in flat}) > len(flat) // 2


def test_ignoring_the_padding_mask_changes_scores(setup) -> None:
    """Negative control: the comparison above detects a broken left-padding path."""
    tok, model = setup
    good = score_options(_logits_fn(model), tok, EXAMPLES, batch_size=4)

    def no_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids).logits

    bad = score_options(no_mask, tok, EXAMPLES, batch_size=4)
    diff = max(abs(g - b) for xg, xb in zip(good, bad, strict=True) for g, b in zip(xg, xb, strict=True))
    assert diff > 1e-3


def test_model_output_with_logits_attribute_is_accepted(setup) -> None:
    tok, model = setup

    def wrapped(ids: torch.Tensor, mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=_logits_fn(model)(ids, mask))

    assert score_options(wrapped, tok, EXAMPLES[:2]) == score_options(_logits_fn(model), tok, EXAMPLES[:2])


def _favour(token_id: int, vocab: int, bonus: float):
    """Logits that give ``token_id`` a fixed bonus at every position."""

    def fn(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*input_ids.shape, vocab)
        logits[..., token_id] = bonus
        return logits

    return fn


def test_evaluate_cloze_hand_computed(word_tokenizer) -> None:
    examples = [
        ClozeExample("q one ?", [" yes", " no"], 0),
        ClozeExample("q two ?", [" yes", " no"], 0),
        ClozeExample("q three ?", [" yes", " no"], 1),
    ]
    tok = word_tokenizer(["q one two three ? yes no"])
    vocab, bonus = len(tok), 2.0
    fn = _favour(tok.convert_tokens_to_ids("yes"), vocab, bonus)
    log_z = math.log(math.exp(bonus) + vocab - 1)
    scores = score_options(fn, tok, examples, batch_size=2)
    for s in scores:
        assert s == pytest.approx([bonus - log_z, -log_z])
    result = evaluate_cloze(fn, tok, examples, batch_size=2)
    assert result["n"] == 3
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx(0.4)  # yes: P 2/3, R 1 -> 0.8; no: 0
    assert result["loss"] == pytest.approx((2 * (log_z - bonus) + log_z) / 3)


def test_loss_is_per_answer_token(word_tokenizer) -> None:
    examples = [ClozeExample("x", [" a b c", " d"], 0), ClozeExample("y", [" a", " d"], 0)]
    tok = word_tokenizer(["x y a b c d"])
    vocab = len(tok)
    result = evaluate_cloze(_favour(0, vocab, 0.0), tok, examples)  # uniform logits
    assert result["loss"] == pytest.approx(math.log(vocab))
    assert score_options(_favour(0, vocab, 0.0), tok, examples)[0] == pytest.approx(
        [-3 * math.log(vocab), -math.log(vocab)]
    )


def test_answer_logprobs_ignores_masked_and_padded_positions() -> None:
    logits = torch.randn(2, 4, 5)
    logits[0, 0] = float("nan")  # a padded position's logits must not leak in
    labels = torch.tensor([[-100, -100, 3, 1], [-100, 2, -100, -100]])
    sums, counts = answer_logprobs(logits, labels)
    logp = torch.log_softmax(logits.double(), -1)
    assert counts.tolist() == [2, 1]
    assert sums[0].item() == pytest.approx((logp[0, 1, 3] + logp[0, 2, 1]).item())
    assert sums[1].item() == pytest.approx(logp[1, 0, 2].item())


def test_bad_batch_size(setup) -> None:
    tok, model = setup
    with pytest.raises(ValueError):
        score_options(_logits_fn(model), tok, EXAMPLES, batch_size=0)
    with pytest.raises(ValueError):
        evaluate_cloze(_logits_fn(model), tok, [])
