"""Generation metrics: SQuAD-style token F1 and exact match (CoQA), ROUGE-1/2/L (rouge-score)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, squeeze spaces (official SQuAD script)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalized tokens' multiset overlap; two empty answers score 1."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no examples")
    if any(not refs for refs in references):
        raise ValueError("every prediction needs at least one reference")


def squad_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over examples of the best :func:`token_f1` against any of its references."""
    _check(predictions, references)
    scores = [max(token_f1(p, r) for r in refs) for p, refs in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions equal to some reference after :func:`normalize_answer`."""
    _check(predictions, references)
    hits = [any(normalize_answer(p) == normalize_answer(r) for r in refs)
            for p, refs in zip(predictions, references, strict=True)]
    return sum(hits) / len(hits)


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (Porter stemming), best reference per example, in [0, 1]."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi(list(refs), prediction)
        for key in totals:
            totals[key] += scores[key].fmeasure
    return {key: value / len(predictions) for key, value in totals.items()}
