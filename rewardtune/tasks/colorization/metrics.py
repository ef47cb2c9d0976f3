"""Split metrics against the original colour images, and `score_dirs` for `rewardtune score`.

- colorfulness: mean over images of Hasler & Suesstrunk's C (rewards.colorfulness);
  colorfulness_truth is the same on the originals, for reference.
- psnr: mean over images of each image's PSNR (RGB 0..255, MAX = 255), each capped at PSNR_CAP dB.
- ssim: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, population (co)variances, only windows inside the image ('valid', as the reference
  MATLAB code; skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255, channel_axis=-1)` crops the same border);
  computed on each RGB channel and averaged, then averaged over images.
- hist_distance: chi-square distance 0.5 * sum (p - q)^2 / (p + q) between the joint (a, b)
  histograms of all pixels of the split (32 x 32 bins of 8 Lab units over [-128, 128)^2,
  values outside clipped to the edge bins); 0 = same colour distribution, 1 = disjoint.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...data.files import load_rgb
from ...errors import DataError
from .codec import ColorTarget, render_outputs
from .color import rgb_to_lab
from .data import IMAGE_EXTENSIONS, list_images
from .rewards import PSNR_CAP, colorfulness, psnr

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
HIST_BINS, HIST_RANGE = 32, 128.0


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size), sums to 1


def ssim(pred: np.ndarray, true: np.ndarray) -> torch.Tensor:
    """Per-image SSIM of RGB [N, H, W, 3] in 0..255 -> float64 [N] (mean of the 3 channels' SSIM).

    Images smaller than the window use a window as large as the image (renormalised Gaussian).
    """
    x = torch.as_tensor(np.asarray(pred)).double().permute(0, 3, 1, 2)  # (N, 3, H, W)
    y = torch.as_tensor(np.asarray(true)).double().permute(0, 3, 1, 2)
    n, c, h, w = x.shape
    size = min(SSIM_WINDOW, h, w)
    win = _gaussian_window(size, SSIM_SIGMA)[None, None]  # (1, 1, s, s)
    x, y = x.reshape(n * c, 1, h, w), y.reshape(n * c, 1, h, w)
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)  # 'valid' windows only
    var_x = F.conv2d(x * x, win) - mu_x ** 2
    var_y = F.conv2d(y * y, win) - mu_y ** 2
    cov = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.reshape(n, c, -1).mean(dim=2).mean(dim=1)


def ab_histogram(images: Sequence[np.ndarray]) -> np.ndarray:
    """Normalised joint (a, b) histogram float64 [HIST_BINS, HIST_BINS] of all pixels of `images`."""
    hist = np.zeros((HIST_BINS, HIST_BINS))
    edge = HIST_RANGE - 1e-6
    for img in images:
        ab = rgb_to_lab(np.asarray(img, np.float64).reshape(-1, 3) / 255.0)[:, 1:]
        h, _, _ = np.histogram2d(*np.clip(ab, -edge, edge).T, bins=HIST_BINS,
                                 range=[[-HIST_RANGE, HIST_RANGE]] * 2)
        hist += h
    return hist / max(hist.sum(), 1.0)


def chi_square_distance(p: np.ndarray, q: np.ndarray) -> float:
    """0.5 * sum (p - q)^2 / (p + q) over bins where p + q > 0; in [0, 1] for normalised p, q."""
    s = p + q
    nz = s > 0
    return float(0.5 * (((p - q) ** 2)[nz] / s[nz]).sum())


def image_metrics(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, float]:
    """Predicted and original RGB uint8 images (HxWx3, pairs of equal size) -> the split metrics."""
    if len(preds) == 0:
        raise DataError("no images to score")
    per_image = defaultdict(list)
    by_shape = defaultdict(list)
    for i, p in enumerate(preds):
        by_shape[np.asarray(p).shape].append(i)
    for idx in by_shape.values():  # batch images of one size together
        p = np.stack([np.asarray(preds[i]) for i in idx])
        t = np.stack([np.asarray(truths[i]) for i in idx])
        per_image["colorfulness"] += colorfulness(p).tolist()
        per_image["colorfulness_truth"] += colorfulness(t).tolist()
        per_image["psnr"] += psnr(p, t).clamp(max=PSNR_CAP).tolist()
        per_image["ssim"] += ssim(p, t).tolist()
    out = {name: float(np.mean(v)) for name, v in per_image.items()}
    out["hist_distance"] = chi_square_distance(ab_histogram(preds), ab_histogram(truths))
    return out


def split_metrics(outputs: Sequence[np.ndarray], targets: Sequence[ColorTarget],
                  ids: Sequence[Any]) -> dict[str, float]:
    """The Task's metrics: decoded chroma grids rendered with each input's lightness vs the originals."""
    rendered = render_outputs(outputs, targets).numpy()
    return image_metrics(list(rendered), [t.rgb for t in targets])


def _count(names: Sequence[str]) -> str:
    return f"{len(names)} image" + ("s" if len(names) != 1 else "")


def _name_list(names: Sequence[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def score_dirs(pred_dir: str, gt_dir: str) -> dict[str, float]:
    """Score the predicted images in `pred_dir` against the originals in `gt_dir` (matched by name
    without extension; `pred_dir/images/` is used when `pred_dir` holds no images itself)."""
    nested = os.path.join(pred_dir, "images")
    if os.path.isdir(nested) and not _has_images(pred_dir):
        pred_dir = nested
    pred, gt = list_images(pred_dir), list_images(gt_dir)
    lacking = [os.path.basename(gt[k]) for k in gt.keys() - pred.keys()]
    if lacking:
        raise DataError(f"{pred_dir} lacks {_count(lacking)} of {gt_dir}: {_name_list(lacking)}")
    extra = [os.path.basename(pred[k]) for k in pred.keys() - gt.keys()]
    if extra:
        raise DataError(f"{pred_dir} has {_count(extra)} not in {gt_dir}: {_name_list(extra)}")
    names = sorted(gt)
    preds = [load_rgb(pred[k]) for k in names]
    truths = [load_rgb(gt[k]) for k in names]
    differ = [f"{os.path.basename(gt[k])} ({p.shape[1]}x{p.shape[0]} vs {t.shape[1]}x{t.shape[0]})"
              for k, p, t in zip(names, preds, truths) if p.shape != t.shape]
    if differ:
        raise DataError(f"{_count(differ)} differ in size between {pred_dir} and {gt_dir} "
                        f"(pred vs gt, WxH): {_name_list(differ)}")
    return {**image_metrics(preds, truths), "images": float(len(names))}


def _has_images(folder: str) -> bool:
    return os.path.isdir(folder) and any(n.lower().endswith(IMAGE_EXTENSIONS) for n in os.listdir(folder))
