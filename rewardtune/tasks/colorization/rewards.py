"""Per-image measures and the colorization rewards: pure tensor functions, no I/O.

Rewards follow the Task contract: (outputs, targets) -> (FloatTensor[N], {part: FloatTensor[N]}),
where outputs are decoded chroma grids and targets `ColorTarget`s (see codec.py).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from .codec import ColorTarget, render_outputs

Images = Union[np.ndarray, torch.Tensor]

# PSNR of identical images is infinite; rewards and split means use this cap (an MSE of 2.6e-6).
PSNR_CAP = 100.0


def _float(images: Images) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images).double()


def colorfulness(rgb: Images) -> torch.Tensor:
    """Hasler & Suesstrunk (2003) colorfulness of RGB [N, H, W, 3] in 0..255 -> float64 [N].

    rg = R - G, yb = (R + G) / 2 - B, C = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 +
    mean(yb)^2), with the population std (numpy's default) over the pixels of each image.
    """
    x = _float(rgb).flatten(1, 2)  # (N, H*W, 3)
    r, g, b = x.unbind(-1)
    rg, yb = r - g, 0.5 * (r + g) - b
    spread = torch.sqrt(rg.var(dim=1, correction=0) + yb.var(dim=1, correction=0))
    centre = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return spread + 0.3 * centre


def psnr(pred: Images, true: Images) -> torch.Tensor:
    """Per-image PSNR in dB of RGB [N, H, W, 3] in 0..255 (MAX = 255) -> float64 [N]; inf if equal."""
    mse = ((_float(pred) - _float(true)) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(255.0 ** 2 / mse)


def colorfulness_reward(outputs: Sequence[np.ndarray], targets: Sequence[ColorTarget]
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Colorfulness of each rendered output (the gray input's lightness + the predicted chroma)."""
    c = colorfulness(render_outputs(outputs, targets)).float()
    return c, {"colorfulness": c}


def colorfulness_fidelity_reward(outputs: Sequence[np.ndarray], targets: Sequence[ColorTarget],
                                 fidelity_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """colorfulness + fidelity_weight * PSNR (dB, capped at PSNR_CAP) against the original colours.

    Scale: colorfulness is in RGB units (0 for gray; shapes-world originals ~93), fidelity is the
    same per-image PSNR the metrics report, so `fidelity_weight` = colorfulness points one dB is
    worth; with the leave-one-out baseline the PSNR's offset does not matter. Measured on shapes
    val (64 px, grid 16): doubling the true chroma adds ~75 colorfulness and costs ~8 dB (~10
    points per dB), so the default weight 10 makes blind over-saturation roughly break even.
    """
    if len(outputs) == 0:
        empty = torch.zeros(0)
        return empty, {"colorfulness": empty, "psnr": empty}
    rendered = render_outputs(outputs, targets)  # (N, H, W, 3)
    true = torch.as_tensor(np.stack([t.rgb for t in targets]))
    c = colorfulness(rendered)
    p = psnr(rendered, true).clamp(max=PSNR_CAP)
    total = (c + fidelity_weight * p).float()
    return total, {"colorfulness": c.float(), "psnr": p.float()}
