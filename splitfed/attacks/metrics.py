"""How much of the private text an attack recovered: token accuracy, ROUGE-L F1, exact sequences."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from rouge_score import rouge_scorer


@dataclass
class AttackScore:
    """Token accuracy (padding excluded), mean ROUGE-L F1 of decoded rows, exact-row rate."""

    token_accuracy: float
    rouge_l: float
    exact_sequence: float
    tokens: int
    sequences: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, tokenizer: Any) -> AttackScore:
    """Compare ``predicted`` with ``target`` token ids where ``mask`` is 1, row by row.

    ROUGE-L (rouge-score's F1, its default tokenizer) is computed on the decoded strings of the
    positions in the mask; a row with nothing in the mask is skipped.
    """
    if predicted.shape != target.shape or mask.shape != target.shape:
        shapes = [tuple(t.shape) for t in (predicted, target, mask)]
        raise ValueError(f"predicted, target and mask shapes differ: {shapes}")
    keep = mask.bool()
    correct = (predicted == target) & keep
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge, exact, rows = [], 0, 0
    for row in range(target.shape[0]):
        if not keep[row].any():
            continue
        rows += 1
        exact += int(bool(correct[row][keep[row]].all()))
        truth = tokenizer.decode(target[row][keep[row]].tolist())
        guess = tokenizer.decode(predicted[row][keep[row]].tolist())
        rouge.append(scorer.score(truth, guess)["rougeL"].fmeasure)
    tokens = int(keep.sum())
    if tokens == 0:
        raise ValueError("the mask selects no token")
    return AttackScore(
        token_accuracy=float(correct.sum()) / tokens,
        rouge_l=sum(rouge) / len(rouge),
        exact_sequence=exact / rows,
        tokens=tokens,
        sequences=rows,
    )
