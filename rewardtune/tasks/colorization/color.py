"""Colour spaces: sRGB <-> CIE Lab (D65, 2 degree observer) and Rec. 601 luma.

One implementation in torch; numpy arrays go in and come back as numpy (float64).
RGB here is gamma-encoded sRGB scaled to [0, 1]; Lab has L in [0, 100] and a, b roughly in
[-128, 127]. The reference white is the sRGB matrix applied to RGB (1, 1, 1) (the D65 white to
7 digits), so every gray R = G = B maps to a = b = 0 exactly and back.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]

# linear sRGB -> XYZ (D65), IEC 61966-2-1
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(dim=1)  # (3,) X_n, Y_n, Z_n
_WHITE_F, _XYZ_TO_RGB_F = _WHITE.tolist(), _XYZ_TO_RGB.tolist()  # as Python floats
_DELTA = 6.0 / 29.0
LUMA_601 = (0.299, 0.587, 0.114)


def _torch(x: Array) -> tuple[torch.Tensor, bool]:
    """-> (a floating tensor, whether the input was numpy)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float64)), True
    return (x if x.is_floating_point() else x.double()), False


def _back(x: torch.Tensor, was_numpy: bool) -> Array:
    return x.numpy() if was_numpy else x


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA ** 3, t.clamp(min=_DELTA ** 3) ** (1 / 3), t / (3 * _DELTA ** 2) + 4 / 29)


def _f_inv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA, t ** 3, 3 * _DELTA ** 2 * (t - 4 / 29))


def rgb_to_lab(rgb: Array) -> Array:
    """sRGB in [0, 1], shape (..., 3) -> Lab (..., 3)."""
    x, was_numpy = _torch(rgb)
    m, white = _RGB_TO_XYZ.to(x), _WHITE.to(x)
    xyz = _srgb_to_linear(x) @ m.T / white  # (..., 3), normalised by the white point
    fx, fy, fz = _f(xyz).unbind(-1)
    lab = torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-1)
    return _back(lab, was_numpy)


def lab_to_rgb_channels(L: torch.Tensor, a: torch.Tensor, b: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lab as three same-shape tensors -> sRGB (r, g, b) in [0, 1], gamut-clipped.

    Channel by channel with scalar coefficients: ~5x faster than (..., 3) tensors with a matmul,
    which matters because rendering runs this several times per reward batch.
    """
    fy = (L + 16) / 116
    xyz = [_f_inv(fy + a / 500) * _WHITE_F[0], _f_inv(fy) * _WHITE_F[1], _f_inv(fy - b / 200) * _WHITE_F[2]]
    return tuple(_linear_to_srgb(m[0] * xyz[0] + m[1] * xyz[1] + m[2] * xyz[2]) for m in _XYZ_TO_RGB_F)


def lab_to_rgb(lab: Array) -> Array:
    """Lab (..., 3) -> sRGB in [0, 1] (..., 3); colours outside the gamut are clipped."""
    x, was_numpy = _torch(lab)
    return _back(torch.stack(lab_to_rgb_channels(*x.unbind(-1)), dim=-1), was_numpy)


def luma(rgb: Array) -> Array:
    """Rec. 601 luma Y' = 0.299 R + 0.587 G + 0.114 B of gamma-encoded RGB, shape (..., 3) -> (...).

    Same scale as the input (0..255 in, 0..255 out); this is what PIL's convert("L") computes.
    """
    x, was_numpy = _torch(rgb)
    y = x @ torch.tensor(LUMA_601, dtype=x.dtype, device=x.device)
    return _back(y, was_numpy)


def gray_uint8(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 (or NxHxWx3) uint8 RGB -> the rounded luma as uint8, shape HxW (NxHxW)."""
    return np.clip(np.rint(luma(rgb.astype(np.float64))), 0, 255).astype(np.uint8)


def lightness_of_gray(gray: Array) -> Array:
    """Gray levels 0..255 (any shape) -> CIE L* of the gray sRGB colour (Y', Y', Y')."""
    g, was_numpy = _torch(gray)
    lin = _srgb_to_linear(g / 255.0)  # for a gray colour Y/Y_n is the linear value itself
    return _back(116 * _f(lin) - 16, was_numpy)
