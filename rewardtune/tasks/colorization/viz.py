"""Report pictures: gray input | prediction | truth, side by side and upscaled."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .codec import ColorTarget, render

MIN_PANEL = 128  # panels are upscaled (nearest, integer factor) to at least this many pixels
GAP = 2  # white pixels between panels


def upscale(image: np.ndarray, min_size: int = MIN_PANEL) -> np.ndarray:
    """HxWx3 uint8 -> the same image repeated by the smallest integer factor reaching `min_size`."""
    factor = max(1, -(-min_size // max(1, min(image.shape[:2]))))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """Equal-height HxWx3 uint8 panels -> one image with white gaps between them."""
    h = panels[0].shape[0]
    gap = np.full((h, GAP, 3), 255, np.uint8)
    parts = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(parts, axis=1)


def visualize(image: np.ndarray, output: np.ndarray, target: Optional[ColorTarget]) -> np.ndarray:
    """(HxWx3 uint8 gray input, chroma grid [g, g, 2], ColorTarget) -> HxW'x3 uint8 strip.

    The prediction is rendered with the input's own lightness; without a target the truth panel
    is left out.
    """
    gray = np.asarray(image, np.uint8)[..., 0]  # (H, W); the 3 channels are equal
    panels = [np.repeat(gray[..., None], 3, axis=-1), render(gray, output).numpy()]
    if target is not None:
        panels.append(np.asarray(target.rgb, np.uint8))
    return side_by_side([upscale(p) for p in panels])
