"""Causal Transformer decoder with cross-attention and a preallocated key/value cache."""
from __future__ import annotations

from dataclasses import dataclass


import torch
import torch.nn as nn
import torch.nn.functional as F

from .vit import MLP


@dataclass
class LayerCache:
    """Per-layer state for incremental decoding; self-attention keys/values grow one step at a time."""

    k_t: torch.Tensor  # (B, H, D, L) preallocated, keys stored transposed so q @ k_t needs no copy
    v: torch.Tensor  # (B, H, L, D)
    mem_k_t: torch.Tensor  # (B, H, D, M) cross-attention keys of the encoder output, transposed
    mem_v: torch.Tensor  # (B, H, M, D)


def attend_one(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of one query position: q (B, H, 1, D), k_t (B, H, D, L), v (B, H, L, D) -> (B, H, 1, D).

    Two batched matmuls on strided views of the cache (no copies); for a single query this is
    faster on CPU than the fused SDPA kernel.
    """
    scores = torch.matmul(q, k_t) * (q.shape[-1] ** -0.5)  # (B, H, 1, L)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class DecoderBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.q_cross = nn.Linear(width, width)
        self.kv_cross = nn.Linear(width, 2 * width)
        self.proj_cross = nn.Linear(width, width)
        self.ln3 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, H, T, D)

    @staticmethod
    def _merge(y: torch.Tensor) -> torch.Tensor:
        B, H, T, D = y.shape
        return y.transpose(1, 2).reshape(B, T, H * D)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_cross(memory).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, mem_k: torch.Tensor, mem_v: torch.Tensor) -> torch.Tensor:
        """Teacher-forced pass over the whole sequence x: (B, T, C)."""
        q, k, v = (self._split(t) for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        x = x + self.proj(self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        q = self._split(self.q_cross(self.ln2(x)))
        x = x + self.proj_cross(self._merge(F.scaled_dot_product_attention(q, mem_k, mem_v)))
        return x + self.mlp(self.ln3(x))

    def step(self, x: torch.Tensor, cache: LayerCache, t: int) -> torch.Tensor:
        """One new position t for every sequence: x (B, 1, C); reads and extends the cache."""
        q, k, v = (self._split(t_) for t_ in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        cache.k_t[..., t] = k[:, :, 0]
        cache.v[:, :, t] = v[:, :, 0]
        y = attend_one(q, cache.k_t[..., :t + 1], cache.v[:, :, :t + 1])
        x = x + self.proj(self._merge(y))
        q = self._split(self.q_cross(self.ln2(x)))
        x = x + self.proj_cross(self._merge(attend_one(q, cache.mem_k_t, cache.mem_v)))
        return x + self.mlp(self.ln3(x))


class Decoder(nn.Module):
    """Tokens LongTensor[B, T] (input ids, BOS = vocab_size) + memory (B, M, C) -> logits (B, T, V)."""

    def __init__(self, vocab_size: int, max_len: int, width: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.vocab_size, self.max_len, self.heads = vocab_size, max_len, heads
        self.embed = nn.Embedding(vocab_size + 1, width)  # +1: the begin-of-sequence token
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, inputs: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        T = inputs.shape[1]
        x = self.embed(inputs) + self.pos[:T]
        for block in self.blocks:
            x = block(x, *block.memory_kv(memory))
        return self.head(self.ln(x))

    def init_cache(self, memory: torch.Tensor, length: int) -> list[LayerCache]:
        B, _, C = memory.shape
        D = C // self.heads
        caches = []
        for block in self.blocks:
            mem_k, mem_v = block.memory_kv(memory)
            k_t = memory.new_empty(B, self.heads, D, length)
            v = memory.new_empty(B, self.heads, length, D)
            caches.append(LayerCache(k_t, v, mem_k.transpose(-1, -2).contiguous(), mem_v.contiguous()))
        return caches

    def step(self, token: torch.Tensor, caches: list[LayerCache], t: int) -> torch.Tensor:
        """token LongTensor[B] at position t -> logits FloatTensor[B, V]."""
        x = self.embed(token)[:, None] + self.pos[t]
        for block, cache in zip(self.blocks, caches):
            x = block.step(x, cache, t)
        return self.head(self.ln(x))[:, 0]
