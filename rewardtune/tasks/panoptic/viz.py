"""Pictures for reports: predicted and ground-truth panoptic maps blended on the image, side by side."""
from __future__ import annotations

import numpy as np

from .maps import VOID, resize_nearest

ALPHA = 0.55  # weight of the segment colour over the image


def segment_colours(ids: np.ndarray, segments: list[dict]) -> np.ndarray:
    """HxWx3 uint8: a colour per category (the same in prediction and truth), instances of a
    category made darker in list order; black on VOID."""
    out = np.zeros(ids.shape + (3,), np.uint8)
    rank: dict[int, int] = {}
    for seg in segments:
        if int(seg["id"]) == VOID:
            continue
        cat = int(seg["category_id"])
        base = np.random.default_rng(cat).integers(60, 256, size=3)
        shade = 1.0 - 0.2 * (rank.get(cat, 0) % 4)
        rank[cat] = rank.get(cat, 0) + 1
        out[ids == int(seg["id"])] = (base * shade).astype(np.uint8)
    return out


def boundaries(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Bool [H, W]: pixels of `mask` whose right or lower neighbour has another id (or the image edge)."""
    edge = np.zeros(ids.shape, bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    return edge & mask


def overlay(image: np.ndarray, panoptic: dict) -> np.ndarray:
    """HxWx3 uint8: segment colours blended on `image`, things outlined in white."""
    h, w = image.shape[:2]
    ids = resize_nearest(np.asarray(panoptic["map"]), h, w)
    segments = list(panoptic["segments"])
    colours = segment_colours(ids, segments)
    labelled = np.isin(ids, [int(s["id"]) for s in segments if int(s["id"]) != VOID])
    blend = image.astype(np.float32)
    blend[labelled] = (1 - ALPHA) * blend[labelled] + ALPHA * colours[labelled].astype(np.float32)
    things = np.isin(ids, [int(s["id"]) for s in segments if s.get("isthing")])
    blend[boundaries(ids, things)] = 255.0
    return blend.round().clip(0, 255).astype(np.uint8)


def visualize(image: np.ndarray, output: dict, target: dict, scale: int = 0) -> np.ndarray:
    """[prediction overlay | gap | ground-truth overlay], upscaled (nearest) to at least 256 px high."""
    image = np.asarray(image, np.uint8)
    h = image.shape[0]
    scale = scale or max(1, -(-256 // max(h, 1)))
    big = np.kron(image, np.ones((scale, scale, 1), np.uint8))
    pred = overlay(big, output)
    gt = overlay(big, target)
    gap = np.full((big.shape[0], max(2, scale), 3), 255, np.uint8)
    return np.concatenate([pred, gap, gt], axis=1)

