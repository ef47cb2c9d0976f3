"""Panoptic id maps: COCO PNG colour <-> id, nearest resizing, segment tables.

A panoptic map is an int array [H, W] of segment ids; 0 is VOID (unlabelled) unless a segment
says otherwise. COCO panoptic PNGs store id = R + 256 G + 256^2 B.
"""
from __future__ import annotations

import numpy as np

VOID = 0


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 (COCO panoptic PNG) -> int32 [H, W] ids, as panopticapi's `rgb2id`."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """int [H, W] ids in [0, 2^24) -> HxWx3 uint8 colours, as panopticapi's `id2rgb`."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


def resize_nearest(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an id map [h, w] -> [height, width] (pixel centres; no-op if same)."""
    h, w = ids.shape
    if (h, w) == (height, width):
        return ids
    rows = ((np.arange(height) + 0.5) * h / height).astype(np.int64).clip(0, h - 1)
    cols = ((np.arange(width) + 0.5) * w / width).astype(np.int64).clip(0, w - 1)
    return ids[rows[:, None], cols[None, :]]


def segment_areas(ids: np.ndarray) -> dict[int, int]:
    """{segment id: pixel count} for every id present in the map (VOID included)."""
    values, counts = np.unique(ids, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def bbox_of(ids: np.ndarray, segment_id: int) -> list[int]:
    """COCO [x, y, w, h] of a segment's pixels ([0, 0, 0, 0] when absent)."""
    ys, xs = np.nonzero(ids == segment_id)
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
