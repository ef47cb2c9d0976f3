"""ViT encoder: a patch (or strided-convolution) stem, fixed 2D sin-cos positions, pre-LN blocks."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding -> FloatTensor[height*width, dim]."""
    assert dim % 4 == 0, "width must be divisible by 4 for 2D sin-cos positions"
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                          torch.arange(width, dtype=torch.float32), indexing="ij")
    omega = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    y = y.flatten()[:, None] * omega[None]
    x = x.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention (encoder)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, C/H)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def conv_stem(width: int, patch_size: int) -> nn.Sequential:
    """Strided 3x3 convolutions down to one token per patch (faster to train than a linear patchify)."""
    steps = int(math.log2(patch_size))
    assert 2 ** steps == patch_size, "the conv stem needs a power-of-two patch size"
    layers, channels = [], 3
    for i in range(steps):
        out = width if i == steps - 1 else max(16, width // 2 ** (steps - 1 - i))
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1)]
        if i < steps - 1:
            layers += [nn.GroupNorm(1, out), nn.GELU()]
        channels = out
    return nn.Sequential(*layers)


class ViTEncoder(nn.Module):
    """Images FloatTensor[B, 3, S, S] in [0, 1] -> tokens FloatTensor[B, (S/P)^2, width]."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int,
                 mlp_ratio: float, stem: str = "conv"):
        super().__init__()
        grid = image_size // patch_size
        if stem == "conv":
            self.stem = conv_stem(width, patch_size)
        else:
            self.stem = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_2d(grid, grid, width), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.ln = nn.LayerNorm(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images * 2.0 - 1.0)  # (B, C, G, G)
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, G*G, C)
        for block in self.blocks:
            x = block(x)
        return self.ln(x)
