"""Vector quantisation for UViM's learned code (docs/method.md#uvim-a-learned-code-for-the-dense-tasks).

    quantizer = VectorQuantizer(codebook_size=256, dim=32)
    zq, indices, loss = quantizer(z)        # z (B, N, D) -> straight-through zq, code indices, VQ loss

Nearest codebook vector by Euclidean distance, on L2-normalised vectors by default (cosine lookup, as in
ViT-VQGAN: keeps codes and encoder outputs on one scale, which keeps more of the dictionary in use). The
codebook learns from the loss (codebook term ||sg(z) - e||^2 + beta * commitment ||z - sg(e)||^2, van den
Oord et al. 2017); the gradient reaches the encoder through the straight-through estimator zq = z + sg(e - z).
Dead codes: `usage` is a running mean (decay 0.95) of each code's share of the assignments in training,
starting at 0; `restart_dead` re-seeds the codes whose share is below `dead_fraction` of the uniform share
1/K with encoder outputs of the last training batch (the big_vision UViM recipe restarts unused codes
likewise). The first call thus seeds every code not yet used from the data; a restarted code starts at
the uniform share and is restarted again if it stays unused for ~70 steps.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

USAGE_DECAY = 0.95  # a code unused for ~70 steps falls from its uniform share 1/K below 0.03/K


class VectorQuantizer(nn.Module):
    """Codebook FloatTensor[K, D]; `usage` FloatTensor[K] (a buffer: checkpointed, so resume is exact)."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, normalize: bool = True,
                 dead_fraction: float = 0.03):
        super().__init__()
        self.codebook_size, self.dim, self.beta = int(codebook_size), int(dim), float(beta)
        self.normalize, self.dead_fraction = bool(normalize), float(dead_fraction)
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))
        self.register_buffer("usage", torch.zeros(codebook_size))
        self._last_z: Optional[torch.Tensor] = None  # the last training batch's (normalised) vectors, for restarts

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1) if self.normalize else z

    def vectors(self) -> torch.Tensor:
        """The codebook as looked up: FloatTensor[K, D] (normalised when `normalize`)."""
        return self._prepare(self.codebook)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices LongTensor[...] of the codebook vectors nearest to z (..., D) (after normalisation)."""
        flat = self._prepare(z).reshape(-1, self.dim)
        book = self.vectors()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return distances.argmin(1).reshape(z.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of indices LongTensor[...] -> FloatTensor[..., D]; indices are clamped to 0..K-1."""
        return F.embedding(indices.clamp(0, self.codebook_size - 1), self.vectors())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (..., D) -> (zq (..., D) with the straight-through gradient, indices (...), VQ loss scalar)."""
        z = self._prepare(z)
        indices = self.nearest(z.detach())
        e = self.lookup(indices)
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(indices.reshape(-1), minlength=self.codebook_size).float()
                self.usage.mul_(USAGE_DECAY).add_((1 - USAGE_DECAY) * counts / counts.sum().clamp(min=1))
            self._last_z = z.detach().reshape(-1, self.dim)
        return z + (e - z).detach(), indices, loss

    @torch.no_grad()
    def restart_dead(self, generator: Optional[torch.Generator] = None) -> int:
        """Re-seed every code whose usage is below dead_fraction / K with a random vector of the last training
        batch (drawn with `generator`); their usage restarts at 1 / K. Returns how many were restarted."""
        if self._last_z is None:
            return 0
        dead = torch.nonzero(self.usage < self.dead_fraction / self.codebook_size).flatten()
        if len(dead) == 0:
            return 0
        pool = self._last_z
        pick = torch.randint(len(pool), (len(dead),), generator=generator, device=pool.device)
        self.codebook.data[dead] = pool[pick].to(self.codebook.dtype)
        self.usage[dead] = 1.0 / self.codebook_size
        return int(len(dead))


def code_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Share of the codebook used by `indices` and the perplexity of their distribution (K = all used evenly)."""
    counts = torch.bincount(indices.reshape(-1).cpu(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"code_usage": float((counts > 0).double().mean()), "code_perplexity": float(entropy.exp())}
