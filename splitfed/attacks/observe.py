"""What the server sees, computed for given rows: the head's output and the tail's gradient."""

from __future__ import annotations

import torch

from splitfed.models import HeadPart, TailPart, TrunkPart
from splitfed.privacy import clip_per_token
from splitfed.training.loss import causal_lm_loss


@torch.no_grad()
def head_outputs(head: HeadPart, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 batch_size: int = 16) -> torch.Tensor:
    """The hidden states a client sends up (before any defense), on the CPU in float32 as they would
    arrive off the wire, wherever and in whatever dtype the head computes."""
    head.eval()
    return torch.cat([head(input_ids[i:i + batch_size], attention_mask[i:i + batch_size]).float().cpu()
                      for i in range(0, input_ids.shape[0], batch_size)])


@torch.no_grad()
def trunk_outputs(trunk: TrunkPart, hidden: torch.Tensor, attention_mask: torch.Tensor,
                  batch_size: int = 16) -> torch.Tensor:
    """The trunk's outputs for ``hidden``, on the CPU in float32 (see :func:`head_outputs`)."""
    trunk.eval()
    return torch.cat([trunk(hidden[i:i + batch_size], attention_mask[i:i + batch_size]).float().cpu()
                      for i in range(0, hidden.shape[0], batch_size)])


def upstream_gradients(tail: TailPart, trunk_output: torch.Tensor, attention_mask: torch.Tensor,
                       labels: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """The gradient a client sends up (tail -> trunk) in training batches of ``batch_size`` rows:
    d(mean loss over the batch's labelled tokens) / d(trunk output), on the CPU in float32. Parameters
    get no gradient."""
    tail.eval()
    grads = []
    for i in range(0, trunk_output.shape[0], batch_size):
        inputs = trunk_output[i:i + batch_size].detach().requires_grad_(True)
        loss = causal_lm_loss(tail(inputs, attention_mask[i:i + batch_size]), labels[i:i + batch_size])
        (grad,) = torch.autograd.grad(loss, inputs)
        grads.append(grad.float().cpu())
    return torch.cat(grads)


def defend(x: torch.Tensor, clip: float | None, sigma: float | torch.Tensor,
           generator: torch.Generator) -> torch.Tensor:
    """The defense as the attacker simulates it: per-token clip to ``clip`` and N(0, sigma^2 clip^2);
    ``sigma`` may be one value per vector (``x.shape[:-1]``). No clip: returned as is."""
    if clip is None:
        return x
    out = clip_per_token(x.float(), clip)
    sigma_t = torch.as_tensor(sigma, dtype=out.dtype)
    if bool((sigma_t > 0).any()):
        if sigma_t.dim() > 0:
            sigma_t = sigma_t.unsqueeze(-1)
        out = out + torch.randn(out.shape, generator=generator) * (sigma_t * clip)
    return out


def median_token_norm(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Median L2 norm of the real (unmasked) vectors: a clip norm that cuts half of them."""
    return float(x.norm(dim=-1)[mask.bool()].median())
