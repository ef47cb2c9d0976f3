"""ViT encoder: a patch (or strided-convolution) stem, fixed 2D sin-cos (or learned) positions, pre-LN blocks.

The defaults (conv stem, sin-cos positions, no class token, layer-norm eps 1e-5) are rewardtune's own
encoder. `stem="patch"`, `pos="learned"`, `cls_token=True` and the checkpoint's `ln_eps` make it the
standard ViT (Dosovitskiy et al.), which `model/pretrained.py` loads weights into.
"""
from __future__ import annotations

import math
from typing import Optional

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
    def __init__(self, width: int, heads: int, mlp_ratio: float, ln_eps: float = 1e-5):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = SelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def conv_stem(width: int, patch_size: int, in_channels: int = 3) -> nn.Sequential:
    """Strided 3x3 convolutions down to one token per patch (faster to train than a linear patchify)."""
    steps = int(math.log2(patch_size))
    assert 2 ** steps == patch_size, "the conv stem needs a power-of-two patch size"
    layers, channels = [], in_channels
    for i in range(steps):
        out = width if i == steps - 1 else max(16, width // 2 ** (steps - 1 - i))
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1)]
        if i < steps - 1:
            layers += [nn.GroupNorm(1, out), nn.GELU()]
        channels = out
    return nn.Sequential(*layers)


class ViTEncoder(nn.Module):
    """Images FloatTensor[B, 3, S, S] in [0, 1] -> tokens FloatTensor[B, (S/P)^2, width].

    stem: "conv" (strided 3x3 convolutions) or anything else: one Conv2d patch x patch (ViT's patchify).
    pos: "sincos" (fixed, a non-persistent buffer) or "learned" (a parameter `pos`, initialised to sin-cos).
    cls_token: prepend a learned class token `cls` (standard ViT: it holds the class token plus its position
    embedding); it takes part in attention and is dropped from the output, which stays one token per patch.
    ln_eps: the epsilon of every layer norm (ViT checkpoints: 1e-6 for timm and big_vision, HF's
    `layer_norm_eps`). in_channels: channels of the input (3 for images; UViM's oracle reads dense targets).
    """

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int,
                 mlp_ratio: float, stem: str = "conv", pos: str = "sincos", cls_token: bool = False,
                 ln_eps: float = 1e-5, in_channels: int = 3):
        super().__init__()
        self.grid = image_size // patch_size
        if stem == "conv":
            self.stem = conv_stem(width, patch_size, in_channels)
        else:
            self.stem = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        positions = sincos_2d(self.grid, self.grid, width)
        if pos == "learned":
            self.pos = nn.Parameter(positions)
        else:
            self.register_buffer("pos", positions, persistent=False)
        self.cls = nn.Parameter(torch.zeros(width)) if cls_token else None
        self.blocks = nn.ModuleList(EncoderBlock(width, heads, mlp_ratio, ln_eps) for _ in range(depth))
        self.ln = nn.LayerNorm(width, eps=ln_eps)

    def forward(self, images: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`extra` (B, G*G, width): added to the patch tokens before the blocks (UViM's base decoder: the code)."""
        x = self.stem(images * 2.0 - 1.0)  # (B, C, G, G)
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, G*G, C)
        if extra is not None:
            x = x + extra
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.ln(x)
        return x if self.cls is None else x[:, 1:]
