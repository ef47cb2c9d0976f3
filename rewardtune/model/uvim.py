"""UViM's stage I (Kolesnikov et al. 2022): a learned, short, discrete code of a dense target.

    model = CodeModel(image_size=64, in_channels=18, out_channels=18, grid=8, codebook_size=256)
    codes = model.encode(dense)             # the target as the oracle sees it -> LongTensor[B, 64]
    pred = model.decode(images, codes)      # image + code -> FloatTensor[B, out_channels, 64, 64]
    pred, vq_loss, codes = model(images, dense)   # training (with code dropout)

- The restricted oracle: a ViT over the dense target (one token per grid cell), projected to code_dim and
  vector-quantised (model/vq.py): grid x grid indices into a codebook of codebook_size.
- The base decoder: a ViT over the *image* with each cell's code vector added to its patch token (a learned
  "no code" vector where the code is dropped), each token unfolded to its patch x patch pixels (pixel
  shuffle), joined with full-resolution features of the image and refined by three convolutions, so region
  boundaries follow the image's edges while the code says what the regions are.
- Code dropout: in training, each image's whole code is replaced by "no code" with probability
  code_dropout, so the decoder learns what the image alone says and the code carries the rest (UViM).

The task says what the dense target is (tasks.base.DenseTarget): channels in, channels out, the loss.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vit import ViTEncoder
from .vq import VectorQuantizer


class CodeModel(nn.Module):
    """Stage I: oracle encoder + quantiser + base decoder. `arch` rebuilds it: CodeModel(**model.arch)."""

    def __init__(self, image_size: int, in_channels: int, out_channels: int, *, grid: int = 8,
                 codebook_size: int = 256, code_dim: int = 32, width: int = 128, depth: int = 2, heads: int = 4,
                 image_channels: int = 3, code_dropout: float = 0.1, beta: float = 0.25, head_channels: int = 32):
        super().__init__()
        if image_size % grid or 2 ** int(math.log2(image_size // grid)) != image_size // grid:
            raise ValueError(f"image size {image_size} must be grid ({grid}) times a power of two")
        self.arch = dict(image_size=image_size, in_channels=in_channels, out_channels=out_channels, grid=grid,
                         codebook_size=codebook_size, code_dim=code_dim, width=width, depth=depth, heads=heads,
                         image_channels=image_channels, code_dropout=code_dropout, beta=beta,
                         head_channels=head_channels)
        self.grid, self.codebook_size, self.code_dropout = grid, codebook_size, float(code_dropout)
        self.patch = image_size // grid
        self.oracle = ViTEncoder(image_size, self.patch, width, depth, heads, 4.0, in_channels=in_channels)
        self.to_code = nn.Linear(width, code_dim)
        self.quantizer = VectorQuantizer(codebook_size, code_dim, beta)
        self.from_code = nn.Linear(code_dim, width)
        self.no_code = nn.Parameter(torch.zeros(width))
        self.base = ViTEncoder(image_size, self.patch, width, depth, heads, 4.0, in_channels=image_channels)
        small = max(4, head_channels // 2)
        self.unfold = nn.Linear(width, self.patch * self.patch * small)  # token -> its patch's pixels
        self.image_features = nn.Sequential(nn.Conv2d(image_channels, head_channels, 3, padding=1), nn.GELU(),
                                            nn.Conv2d(head_channels, head_channels, 3, padding=1))
        joined = small + head_channels
        self.head = nn.Sequential(nn.Conv2d(joined, joined, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(joined, joined, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(joined, out_channels, 1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # The code enters the base decoder at the scale of its patch tokens (components ~1, like the positions):
        # at 0.02 it was ~3 % of a token's norm, the decoder learned from the image alone and ignored the code
        # (a first panoptic run decoded identically with and without it after 250 steps).
        nn.init.normal_(self.from_code.weight, std=1.0)

    # ---- the code -------------------------------------------------------------------------------
    def _latent(self, dense: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.oracle(dense))  # (B, grid^2, code_dim)

    @torch.no_grad()
    def encode(self, dense: torch.Tensor) -> torch.Tensor:
        """Dense target FloatTensor[B, in_channels, S, S] -> code LongTensor[B, grid^2] (raster order)."""
        return self.quantizer.nearest(self._latent(dense))

    # ---- decoding -------------------------------------------------------------------------------
    def _decode(self, images: torch.Tensor, code_tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.base(images, extra=code_tokens)  # (B, grid^2, width)
        b, g, p = images.shape[0], self.grid, self.patch
        pixels = self.unfold(tokens).view(b, g, g, p, p, -1).permute(0, 5, 1, 3, 2, 4)  # (B, c, g, p, g, p)
        pixels = pixels.reshape(b, -1, g * p, g * p)
        return self.head(torch.cat([pixels, self.image_features(images * 2.0 - 1.0)], dim=1))

    def _code_tokens(self, zq: Optional[torch.Tensor], drop: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """Code vectors (B, grid^2, code_dim) -> the decoder's additions (B, grid^2, width); dropped images get
        the "no code" vector everywhere (zq None: every image)."""
        none = self.no_code.expand(batch, self.grid * self.grid, -1)
        if zq is None:
            return none
        added = self.from_code(zq)
        return added if drop is None else torch.where(drop.view(-1, 1, 1), none, added)

    def decode(self, images: torch.Tensor, codes: Optional[torch.Tensor]) -> torch.Tensor:
        """Images FloatTensor[B, 3, S, S] in [0, 1] + codes LongTensor[B, grid^2] (None: decode from the image
        alone) -> prediction FloatTensor[B, out_channels, S, S]. Any code decodes (indices are clamped)."""
        zq = None if codes is None else self.quantizer.lookup(codes.reshape(images.shape[0], -1))
        return self._decode(images, self._code_tokens(zq, None, images.shape[0]))

    def forward(self, images: torch.Tensor, dense: torch.Tensor,
                drop: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass -> (prediction FloatTensor[B, out_channels, S, S], VQ loss, codes LongTensor[B, grid^2]).

        `drop` BoolTensor[B]: images decoded without their code; None draws it (code_dropout) from the global
        torch RNG in training mode and drops nothing in eval mode."""
        zq, codes, vq_loss = self.quantizer(self._latent(dense))
        if drop is None and self.training and self.code_dropout > 0:
            drop = torch.rand(images.shape[0], device=images.device) < self.code_dropout
        return self._decode(images, self._code_tokens(zq, drop, images.shape[0])), vq_loss, codes

    def restart_dead_codes(self, generator: Optional[torch.Generator] = None) -> int:
        """Re-seed unused codebook entries from the last training batch (model/vq.py); returns how many."""
        return self.quantizer.restart_dead(generator)
