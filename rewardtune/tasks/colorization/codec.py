"""Colours as tokens: the (a, b) chroma of each grid cell, quantised to a learned palette.

Target and output types (the contract between codec, rewards, metrics and viz):
- a target is a `ColorTarget`: the original RGB image and the gray (luma) image the model sees;
- a decoded output is a chroma grid, float32 [grid, grid, 2] of (a, b) in Lab units;
- `render(gray, chroma)` combines the gray input's lightness with the upsampled chroma -> RGB.

Tokens: one palette index per cell in raster order (row by row), then the end token (= K).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .color import LUMA_601, gray_uint8, lab_to_rgb, lab_to_rgb_channels, lightness_of_gray, rgb_to_lab

SECANT_STEPS = 2  # cost: SECANT_STEPS + 2 Lab -> RGB conversions per render


@dataclass(frozen=True, eq=False)
class ColorTarget:
    """The truth for one image: `rgb` HxWx3 uint8 (original colours), `gray` HxW uint8 (the input)."""

    rgb: np.ndarray
    gray: np.ndarray

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> "ColorTarget":
        return cls(rgb=rgb, gray=gray_uint8(rgb))


def _pool_matrix(n: int, grid: int) -> np.ndarray:
    """[grid, n] averaging weights of adaptive average pooling (cell i: floor(i n/g) .. ceil((i+1) n/g))."""
    m = np.zeros((grid, n))
    for i in range(grid):
        start, end = (i * n) // grid, -((-(i + 1) * n) // grid)
        m[i, start:end] = 1.0 / (end - start)
    return m


def cell_chroma(rgb: Union[np.ndarray, torch.Tensor], grid: int) -> torch.Tensor:
    """RGB uint8 [..., H, W, 3] -> mean (a, b) of each cell, float64 [..., grid, grid, 2].

    The mean of the pixels' a and b (not the Lab of the mean colour); the cells are those of
    adaptive average pooling, so H and W need not be multiples of `grid`. (Pooling is a numpy
    matrix product: torch's pooling and einsum kernels were ~100x slower on these small tensors
    on a busy 2-core CPU.)
    """
    ab = rgb_to_lab(np.asarray(rgb, dtype=np.float64) / 255.0)[..., 1:]  # (..., H, W, 2)
    h, w = ab.shape[-3:-1]
    planes = np.moveaxis(ab, -1, -3)  # (..., 2, H, W)
    pooled = _pool_matrix(h, grid) @ planes @ _pool_matrix(w, grid).T  # (..., 2, g, g)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(pooled, -3, -1)))


def render(gray: Union[np.ndarray, torch.Tensor], chroma: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """Gray input uint8 [..., H, W] + chroma grid [..., g, g, 2] -> RGB uint8 tensor [..., H, W, 3].

    The chroma is upsampled bilinearly. Luma (the gray input) is not CIE L*: a saturated red of
    luma 60 has L* 42, not the L* 25 of gray 60. So each pixel's L* is solved for so that the
    rendered colour has the input's luma (`_solve_lightness`); with the true per-pixel chroma this
    gives back the original image (mean error ~0.5 levels on random saturated colours), and neutral
    chroma (0, 0) gives back the gray input exactly.
    """
    gray_t = torch.as_tensor(np.asarray(gray) if isinstance(gray, np.ndarray) else gray)
    chroma_t = torch.as_tensor(np.asarray(chroma) if isinstance(chroma, np.ndarray) else chroma).float()
    lead, (h, w) = gray_t.shape[:-2], gray_t.shape[-2:]
    ab = chroma_t.reshape(-1, *chroma_t.shape[-3:]).permute(0, 3, 1, 2)  # (M, 2, g, g)
    ab = F.interpolate(ab, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    target_L = lightness_of_gray(gray_t.reshape(-1, h, w).float())  # (M, H, W)
    L = _solve_lightness(target_L, ab)
    rgb = lab_to_rgb(torch.cat([L.unsqueeze(-1), ab], dim=-1))  # (M, H, W, 3) in [0, 1]
    return (rgb * 255).round().clamp(0, 255).to(torch.uint8).reshape(*lead, h, w, 3)


def _solve_lightness(target_L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """L* [M, H, W] at which Lab (L*, a, b) has luma of lightness `target_L` (the gray's L*).

    g(L) = L* of the luma of Lab (L, a, b) is increasing (flat where the gamut clips); one
    fixed-point step from L = target_L, then SECANT_STEPS secant steps. Gray (a = b = 0) is exact
    from the start: g(L) = L.
    """
    a, b = ab[..., 0].contiguous(), ab[..., 1].contiguous()  # (M, H, W) each

    def g(L: torch.Tensor) -> torch.Tensor:
        r, gr, bl = lab_to_rgb_channels(L, a, b)
        return lightness_of_gray((LUMA_601[0] * r + LUMA_601[1] * gr + LUMA_601[2] * bl) * 255)

    L0, g0 = target_L, g(target_L)
    L1 = (L0 + target_L - g0).clamp(0, 100)
    for _ in range(SECANT_STEPS):
        g1 = g(L1)
        dL, dg = L1 - L0, g1 - g0
        usable = (dL.abs() > 1e-3) & (dg * dL > 0.05 * dL * dL)  # slope known and > 0.05
        slope = torch.where(usable, dg / torch.where(usable, dL, torch.ones_like(dL)), torch.ones_like(dL))
        L0, g0, L1 = L1, g1, (L1 + (target_L - g1) / slope).clamp(0, 100)
    return L1


def kmeans_palette(points: np.ndarray, k: int, seed: int = 0, iters: int = 25,
                   max_points: int = 50_000) -> np.ndarray:
    """k-means of (a, b) points [M, 2] -> palette float32 [k, 2]; entry 0 is always neutral (0, 0).

    Deterministic for a given seed: k-means++ initialisation, then Lloyd iterations (the neutral
    entry stays fixed, so gray cells always have an exact token). Fewer distinct points than k
    leaves duplicate entries, which are harmless.
    """
    rng = np.random.default_rng(seed)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        pts = np.zeros((1, 2))
    if len(pts) > max_points:
        pts = pts[rng.choice(len(pts), max_points, replace=False)]
    centers = [np.zeros(2)]
    d2 = (pts ** 2).sum(1)
    for _ in range(k - 1):  # k-means++: next centre with probability ~ squared distance
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(pts), 1.0 / len(pts))
        centers.append(pts[rng.choice(len(pts), p=p)])
        d2 = np.minimum(d2, ((pts - centers[-1]) ** 2).sum(1))
    c = np.stack(centers)
    for _ in range(iters):
        assign = _nearest(pts, c)
        sums = np.stack([np.bincount(assign, weights=pts[:, j], minlength=k) for j in range(2)], axis=1)
        counts = np.bincount(assign, minlength=k)[:, None]
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        moved[0] = 0.0
        if np.allclose(moved, c):
            break
        c = moved
    return c.astype(np.float32)


def _as_float(token: Any) -> float:
    try:
        return float(token)
    except (OverflowError, TypeError, ValueError):
        return -1.0  # decodes as a neutral cell


def _nearest(points: np.ndarray, palette: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Index of the nearest palette entry (the first on ties) for each point [M, 2] -> [M]."""
    c2 = (palette ** 2).sum(1)  # (K,)
    out = [((p ** 2).sum(1)[:, None] - 2 * p @ palette.T + c2).argmin(1)  # (m, K) squared distances
           for p in np.array_split(points, max(1, -(-len(points) // chunk)))]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


class ColorCodec:
    """Chroma grid <-> tokens. vocab = K palette colours + end; max_len = grid * grid + 1."""

    def __init__(self, palette: np.ndarray, grid: int):
        self.palette = np.asarray(palette, np.float32).reshape(-1, 2)  # (K, 2)
        self.grid = int(grid)
        self.end_token = len(self.palette)
        self.vocab_size = len(self.palette) + 1
        self.max_len = self.grid * self.grid + 1

    def encode(self, target: Any, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """A ColorTarget (or an HxWx3 uint8 RGB image) -> LongTensor[grid*grid + 1]; `rng` unused."""
        rgb = target.rgb if isinstance(target, ColorTarget) else target
        ab = cell_chroma(rgb, self.grid).numpy().reshape(-1, 2)  # (g*g, 2), raster order
        ids = _nearest(ab, self.palette.astype(np.float64))
        return torch.tensor([*ids.tolist(), self.end_token], dtype=torch.long)

    def decode(self, tokens: Sequence[int], step_log_probs: Optional[torch.Tensor] = None,
               image: Optional[torch.Tensor] = None) -> np.ndarray:
        """Any tokens -> chroma float32 [grid, grid, 2]. Stops at the end token; cells without a
        (valid) palette token are neutral (0, 0). `step_log_probs` is unused."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu()
        try:
            ids = np.asarray(tokens, dtype=np.float64).reshape(-1)[: self.grid * self.grid]
        except (OverflowError, TypeError, ValueError):  # e.g. a Python int beyond float64
            ids = np.array([_as_float(t) for t in list(tokens)[: self.grid * self.grid]], dtype=np.float64)
        ids = np.nan_to_num(ids, nan=-1.0, posinf=-1.0, neginf=-1.0)
        ends = np.flatnonzero(ids == self.end_token)
        if len(ends):
            ids = ids[: ends[0]]
        out = np.zeros((self.grid * self.grid, 2), np.float32)
        valid = (ids >= 0) & (ids < len(self.palette)) & (ids == np.floor(ids))
        out[: len(ids)][valid] = self.palette[ids[valid].astype(np.int64)]
        return out.reshape(self.grid, self.grid, 2)

    def grammar(self) -> torch.Tensor:
        """BoolTensor[max_len, V]: palette colours at every cell position, only the end token last."""
        mask = torch.zeros(self.max_len, self.vocab_size, dtype=torch.bool)
        mask[:-1, : self.end_token] = True
        mask[-1, self.end_token] = True
        return mask


def render_outputs(outputs: Sequence[np.ndarray], targets: Sequence[ColorTarget]) -> torch.Tensor:
    """Decoded chroma grids + their targets (same image size) -> RGB uint8 [N, H, W, 3]."""
    if len(outputs) == 0:
        return torch.zeros(0, 1, 1, 3, dtype=torch.uint8)
    gray = torch.as_tensor(np.stack([t.gray for t in targets]))  # (N, H, W)
    chroma = torch.as_tensor(np.stack([np.asarray(o, np.float32) for o in outputs]))  # (N, g, g, 2)
    return render(gray, chroma)
