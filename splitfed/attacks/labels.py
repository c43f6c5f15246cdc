"""Label exposure: how many of the victim's labelled tokens an honest-but-curious server learns.

two-part layout: the labels travel to the server with every training step (``loss`` messages), so
it reads them: recovery is exact by construction, and measured here as such. three-part layout: the
labels never leave the client; the server's best guess is the public pretrained tail's next-token
prediction on the trunk output it computed (the direct-forward attack, scored at labelled positions).
"""

from __future__ import annotations

import torch

from splitfed.layout import Layout
from splitfed.models import TailPart

IGNORE_INDEX = -100


@torch.no_grad()
def label_guesses(layout: str, public_tail: TailPart, trunk_output: torch.Tensor,
                  attention_mask: torch.Tensor, labels: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(predicted, target, mask)`` over the labelled positions, for ``score``."""
    keep = labels != IGNORE_INDEX
    target = labels.clamp(min=0)
    if layout == Layout.TWO_PART:
        received = labels.clone()  # what the server's loss request carries, in the clear
        return received.clamp(min=0), target, keep
    logits = public_tail(trunk_output, attention_mask)
    predicted = torch.zeros_like(labels)
    predicted[:, 1:] = logits[:, :-1].argmax(-1).cpu()
    keep[:, 0] = False  # nothing predicts the first position
    return predicted, target, keep
