"""The colours as pixels, for UViM's learned code (tasks.base.DenseTarget, train.stage = "codec").

In: each pixel's (a, b) chroma divided by AB_SCALE (about -1..1) and its gray level / 255 (what the model's
input holds; the oracle sees it so the code need not spend bits on it). Out: (a, b) / AB_SCALE per pixel.
Loss: the mean squared error of (a, b) / AB_SCALE over pixels (the colour error PSNR penalises; with the code
the decoder knows the colours, so regression to the mean is not the risk it is without one).
Outputs: the chroma float32 [S, S, 2] in Lab units, the grid codec's output with one cell per pixel, which
`render` (bilinear upsampling to the same size is the identity), the metrics and the pictures take.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..base import DenseTarget
from .codec import ColorTarget
from .color import rgb_to_lab

AB_SCALE = 100.0  # Lab a and b span about -110..100 over sRGB


def chroma(targets: Sequence[ColorTarget]) -> torch.Tensor:
    """Targets -> (a, b) / AB_SCALE, FloatTensor[B, 2, H, W]."""
    lab = rgb_to_lab(np.stack([np.asarray(t.rgb) for t in targets]).astype(np.float64) / 255.0)
    return torch.from_numpy(lab[..., 1:] / AB_SCALE).float().permute(0, 3, 1, 2)


def to_input(targets: Sequence[ColorTarget]) -> torch.Tensor:
    """Targets -> FloatTensor[B, 3, H, W]: (a, b) / AB_SCALE and the gray input / 255."""
    gray = torch.from_numpy(np.stack([np.asarray(t.gray) for t in targets])).float()[:, None] / 255.0
    return torch.cat([chroma(targets), gray], dim=1)


def loss(prediction: torch.Tensor, targets: Sequence[ColorTarget]) -> tuple[torch.Tensor, dict]:
    mse = F.mse_loss(prediction.float(), chroma(targets).to(prediction.device))
    return mse, {"chroma_mse": mse.item()}


def to_outputs(prediction: torch.Tensor) -> list:
    """FloatTensor[B, 2, S, S] -> B chroma arrays float32 [S, S, 2] in Lab units."""
    ab = (prediction.detach().float().cpu() * AB_SCALE).permute(0, 2, 3, 1).numpy()
    return list(np.ascontiguousarray(ab))


DENSE = DenseTarget(in_channels=3, out_channels=2, to_input=to_input, loss=loss, to_outputs=to_outputs)
