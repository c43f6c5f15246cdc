"""A learned inverter: a small MLP that maps one received vector to the token it came from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from splitfed.attacks.observe import defend

Noise = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Inverter(nn.Module):
    """Scale-free input (each vector divided by its RMS, then LayerNorm) -> MLP -> a direction in
    embedding space, scored by cosine against every token embedding (the public embedding matrix,
    frozen) with a learned temperature. The RMS step matters for gradients, whose norms (~1e-6) are
    far below LayerNorm's epsilon."""

    def __init__(self, dim: int, embeddings: torch.Tensor, hidden: int = 1024) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Linear(hidden, embeddings.shape[1]))
        self.register_buffer("table", nn.functional.normalize(embeddings.detach().float(), dim=-1))
        self.log_scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float()
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-30)
        direction = nn.functional.normalize(self.body(self.norm(x)), dim=-1)
        table = self.table if candidates is None else self.table[candidates]
        return self.log_scale.exp() * direction @ table.T

    @property
    def device(self) -> torch.device:
        return self.table.device

    @torch.no_grad()
    def top_k(self, x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
        """The ``k`` most likely token ids of every vector of ``x`` (``..., dim`` -> ``..., k``), on the
        CPU wherever the inverter computes."""
        self.eval()
        flat = x.reshape(-1, x.shape[-1])
        out = torch.cat([self(flat[i:i + chunk].to(self.device)).topk(k, dim=-1).indices.cpu()
                         for i in range(0, flat.shape[0], chunk)])
        return out.reshape(*x.shape[:-1], k)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """The most likely token id of every vector of ``x`` (``..., dim``), over the whole vocabulary, on
        the CPU."""
        self.eval()
        flat = x.reshape(-1, x.shape[-1])
        out = torch.cat([self(flat[i:i + chunk].to(self.device)).argmax(-1).cpu()
                         for i in range(0, flat.shape[0], chunk)])
        return out.reshape(x.shape[:-1])


def train_inverter(
    features: torch.Tensor,
    targets: torch.Tensor,
    embeddings: torch.Tensor,
    noise: Noise,
    steps: int = 400,
    batch_size: int = 256,
    lr: float = 2e-3,
    hidden: int = 1024,
    negatives: int = 4096,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    device: torch.device | str = "cpu",
) -> Inverter:
    """Train an inverter on ``features`` (N, dim) -> ``targets`` (N,), re-drawing the defense's
    noise on every batch with ``noise(x, generator)`` (noise-aware training). The data and the noise
    stay on the CPU (the noise's generator is there); each batch, and the inverter, are on ``device``.

    The softmax is sampled: over the training targets' tokens plus ``negatives`` random tokens
    (fixed per run); prediction always scores the whole vocabulary.
    """
    if features.shape[0] != targets.shape[0] or features.shape[0] == 0:
        raise ValueError(f"{features.shape[0]} feature vectors for {targets.shape[0]} targets")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Inverter(features.shape[-1], embeddings, hidden).to(device)
    vocab = embeddings.shape[0]
    candidates = torch.unique(torch.cat([targets, torch.randint(vocab, (negatives,), generator=generator)]))
    position = torch.full((vocab,), -1, dtype=torch.long)
    position[candidates] = torch.arange(candidates.numel())
    local = position[targets]
    candidates = candidates.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        index = torch.randint(features.shape[0], (batch_size,), generator=generator)
        x = noise(features[index], generator).to(device)
        loss = nn.functional.cross_entropy(model(x, candidates), local[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(step, float(loss))
    return model


def sigma_sampler(clip: float | None, sigmas: Sequence[float]) -> Noise:
    """Noise for mixed-level training: every vector gets a sigma drawn uniformly from ``sigmas``."""
    levels = torch.tensor(list(sigmas), dtype=torch.float32)

    def noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pick = levels[torch.randint(levels.numel(), x.shape[:-1], generator=generator)]
        return defend(x, clip, pick, generator)

    return noise


def fixed_noise(clip: float | None, sigma: float) -> Noise:
    """Noise for noise-aware training at the defense's own level."""
    return lambda x, generator: defend(x, clip, sigma, generator)
