"""Panoptic quality, matched exactly as panopticapi's `pq_compute_single_core`, vectorised over a batch.

A panoptic (prediction or ground truth) is a dict {"map": int [H, W] segment ids, "segments":
[{"id", "category_id", "iscrowd"?, "area"?}, ...]}. The rules, per image:
- a (gt, pred) pair matches when both are segments of the same category, the gt is not crowd, and
  IoU > 0.5 with `union = pred_area + gt_area - intersection - (pred pixels on gt VOID, id 0)`;
- an unmatched, non-crowd gt segment is a false negative;
- an unmatched pred segment is a false positive unless more than half of its area lies on gt VOID
  plus the crowd region of its category (the last crowd segment of that category in the gt list);
- gt areas are the "area" field when given (panopticapi reads it from the JSON), else pixel counts;
  pred areas are always pixel counts. Pred pixels whose id is not a listed segment are ignored here
  (the file scorer rejects them before, as panopticapi does).

Everything is computed from one joint histogram of (image, pred segment, gt segment) pixel counts.
Shapes: N images, P pred columns, G gt columns, C categories present in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..base import REGION_PART, REGIONS
from .maps import VOID, resize_nearest


@dataclass
class PQStats:
    """Per-image, per-category counts; `categories[c]` is the category id of column c."""

    categories: np.ndarray  # (C,) int64
    tp: np.ndarray  # (N, C) int64
    fp: np.ndarray  # (N, C) int64
    fn: np.ndarray  # (N, C) int64
    iou: np.ndarray  # (N, C) float64, sum of the IoUs of the true positives


@dataclass
class _Table:
    """One map's segments as dense columns: column k = k-th of the sorted known ids; last = unknown id."""

    cols: np.ndarray  # (H*W,) int64 column of each pixel
    is_seg: np.ndarray  # (K,) bool
    cat: np.ndarray  # (K,) int64
    crowd: np.ndarray  # (K,) bool
    crowd_chosen: np.ndarray  # (K,) bool, the crowd segment panopticapi uses for its category
    area: np.ndarray  # (K,) float64
    void_col: int
    ids: np.ndarray  # (K - 1,) int64 the id of each column but the last (VOID's among them)


def _table(ids: np.ndarray, segments: Sequence[dict], json_area: bool) -> _Table:
    segs = {int(s["id"]): s for s in segments}  # a dict, as panopticapi: the last duplicate wins
    known = np.array(sorted(set(segs) | {VOID}), dtype=np.int64)
    flat = ids.reshape(-1).astype(np.int64)
    idx = np.searchsorted(known, flat).clip(0, len(known) - 1)
    cols = np.where(known[idx] == flat, idx, len(known))
    k = len(known) + 1
    counts = np.bincount(cols, minlength=k).astype(np.float64)
    is_seg, crowd, chosen = np.zeros(k, bool), np.zeros(k, bool), np.zeros(k, bool)
    cat, area = np.full(k, -1, np.int64), counts.copy()
    position = {int(v): i for i, v in enumerate(known)}
    crowd_of_cat: dict[int, int] = {}
    for sid, seg in segs.items():
        i = position[sid]
        is_seg[i], cat[i] = True, int(seg["category_id"])
        crowd[i] = int(seg.get("iscrowd", 0)) == 1
        if json_area and "area" in seg:
            area[i] = float(seg["area"])
        if crowd[i]:
            crowd_of_cat[int(cat[i])] = i
    chosen[list(crowd_of_cat.values())] = True
    return _Table(cols, is_seg, cat, crowd, chosen, area, position[VOID], known)


def _pad(tables: Sequence[_Table], name: str, width: int, fill: Any) -> np.ndarray:
    first = getattr(tables[0], name)
    out = np.full((len(tables), width), fill, dtype=first.dtype)
    for n, t in enumerate(tables):
        v = getattr(t, name)
        out[n, : len(v)] = v
    return out


def _tables(preds: Sequence[dict], gts: Sequence[dict]) -> tuple[list[_Table], list[_Table]]:
    """Segment tables of every pair; a gt shared by several preds (N samples) is tabled once."""
    cache: dict[int, _Table] = {}
    pred_tables, gt_tables = [], []
    for pred, gt in zip(preds, gts):
        key = id(gt)
        if key not in cache:
            cache[key] = _table(np.asarray(gt["map"]), gt["segments"], json_area=True)
        gt_map = np.asarray(gt["map"])
        pred_map = np.asarray(pred["map"])
        if pred_map.shape != gt_map.shape:
            pred_map = resize_nearest(pred_map, *gt_map.shape)
        pred_tables.append(_table(pred_map, pred["segments"], json_area=False))
        gt_tables.append(cache[key])
    return pred_tables, gt_tables


def _joint_histogram(pt: Sequence[_Table], gt: Sequence[_Table], p: int, g: int) -> np.ndarray:
    """(N, P, G) pixel counts of each (pred column, gt column) pair."""
    n = len(pt)
    codes = np.concatenate([i * p * g + a.cols * g + b.cols for i, (a, b) in enumerate(zip(pt, gt))])
    return np.bincount(codes, minlength=n * p * g).reshape(n, p, g).astype(np.float64)


@dataclass
class Matching:
    """pq_stats' counts and what produced them, for the per-region credit (`pq_region_credit`)."""

    stats: PQStats
    gt_tables: list  # (N,) _Table of each image's ground truth
    gt_iou: np.ndarray  # (N, G) the IoU of the prediction each gt column matches, 0 where none
    gt_cat: np.ndarray  # (N, G) index into stats.categories of each gt column (clipped)
    pred_tables: list  # (N,) _Table of each prediction (on the gt's grid)
    fn: np.ndarray  # (N, G) bool, the gt columns counted as false negatives
    fp: np.ndarray  # (N, P) bool, the pred columns counted as false positives
    pred_cat: np.ndarray  # (N, P) index into stats.categories of each pred column (clipped)
    inter: np.ndarray  # (N, P, G) pixels of each (pred column, gt column) pair


def pq_stats(preds: Sequence[dict], gts: Sequence[dict]) -> PQStats:
    """Per-image, per-category tp / fp / fn / IoU sums of `preds[i]` against `gts[i]`."""
    return match_segments(preds, gts).stats


def match_segments(preds: Sequence[dict], gts: Sequence[dict]) -> Matching:
    if len(preds) != len(gts):
        raise ValueError(f"pq_stats: {len(preds)} predictions for {len(gts)} ground truths")
    n = len(preds)
    if n == 0:
        z = np.zeros((0, 0), np.int64)
        return Matching(PQStats(np.zeros(0, np.int64), z, z, z, z.astype(np.float64)), [], z.astype(np.float64), z, [],
                        z.astype(bool), z.astype(bool), z, np.zeros((0, 0, 0)))
    pt, gt = _tables(preds, gts)
    p, g = max(len(t.is_seg) for t in pt), max(len(t.is_seg) for t in gt)
    inter = _joint_histogram(pt, gt, p, g)  # (N, P, G)
    p_seg, p_cat = _pad(pt, "is_seg", p, False), _pad(pt, "cat", p, -1)
    g_seg, g_cat = _pad(gt, "is_seg", g, False), _pad(gt, "cat", g, -1)
    g_crowd, g_chosen = _pad(gt, "crowd", g, False), _pad(gt, "crowd_chosen", g, False)
    g_area = _pad(gt, "area", g, 0.0)
    p_area = inter.sum(2)  # (N, P)
    void_cols = np.array([t.void_col for t in gt])
    void_in_pred = inter[np.arange(n), :, void_cols]  # (N, P)

    same_cat = p_cat[:, :, None] == g_cat[:, None, :]  # (N, P, G)
    valid = p_seg[:, :, None] & g_seg[:, None, :] & ~g_crowd[:, None, :] & same_cat & (inter > 0)
    union = p_area[:, :, None] + g_area[:, None, :] - inter - void_in_pred[:, :, None]
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=valid & (union > 0))
    match = valid & (iou > 0.5)

    gt_matched, pred_matched = match.any(1), match.any(2)  # (N, G), (N, P)
    fn_mask = g_seg & ~g_crowd & ~gt_matched
    ignored = void_in_pred + (inter * (g_chosen[:, None, :] & same_cat)).sum(2)  # (N, P)
    share = np.divide(ignored, p_area, out=np.ones_like(ignored), where=p_area > 0)
    fp_mask = p_seg & ~pred_matched & (p_area > 0) & ~(share > 0.5)

    cats = np.unique(np.concatenate([p_cat[p_seg], g_cat[g_seg]]))
    c = len(cats)
    cat_g = np.searchsorted(cats, g_cat).clip(0, max(c - 1, 0))
    rows_g = np.arange(n)[:, None] * c + cat_g
    rows_p = np.arange(n)[:, None] * c + np.searchsorted(cats, p_cat).clip(0, max(c - 1, 0))

    def count(rows: np.ndarray, mask: np.ndarray, weights=None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return np.bincount(rows[mask], weights=w, minlength=n * c).reshape(n, c)

    gt_iou = (iou * match).sum(1)  # (N, G): at most one prediction matches a gt segment
    tp = count(rows_g, gt_matched).astype(np.int64)
    iou_sum = count(rows_g, gt_matched, gt_iou)
    fn = count(rows_g, fn_mask).astype(np.int64)
    fp = count(rows_p, fp_mask).astype(np.int64)
    return Matching(PQStats(cats.astype(np.int64), tp, fp, fn, iou_sum), gt, gt_iou, cat_g, pt, fn_mask, fp_mask,
                    rows_p - np.arange(n)[:, None] * c, inter)


def pq_region_credit(preds: Sequence[dict], gts: Sequence[dict], regions: int) -> np.ndarray:
    """Where each image's PQ (pq_batch) was earned: float64 [N, regions, regions], the image cut into equal
    regions (pixel (y, x) of an H x W map in region (y * regions // H, x * regions // W)); each image's
    regions sum to its PQ.

    Per-image PQ is a sum over matched gt segments of IoU / (tp + fp/2 + fn/2 of its category) / (the
    categories present); each term is spread evenly over its gt segment's pixels. A missed or wrongly
    split segment earns its pixels nothing; false positives lower the terms of their category. An image
    where nothing counts (PQ 1) spreads its 1 evenly.
    """
    return _region_credit(match_segments(preds, gts), gts, regions)


def _region_credit(m: Matching, gts: Sequence[dict], regions: int) -> np.ndarray:
    s = m.stats
    n = len(m.gt_tables)
    out = np.zeros((n, regions, regions))
    if n == 0:
        return out
    present, denom = _denominator(s.tp, s.fp, s.fn)  # (N, C) each
    counted = present.sum(1)  # (N,)
    for i, table in enumerate(m.gt_tables):
        h, w = np.asarray(gts[i]["map"]).shape
        cell = _cells(h, w, regions)
        if counted[i] == 0:
            out[i] = np.bincount(cell, minlength=regions * regions).reshape(regions, regions) / (h * w)
            continue
        k = len(table.is_seg)
        term = m.gt_iou[i, :k] / denom[i, m.gt_cat[i, :k]] / counted[i]  # 0 for unmatched columns
        per_pixel, _ = _over_pixels(table, term)
        out[i] = np.bincount(cell, weights=per_pixel, minlength=regions * regions).reshape(regions, regions)
    return out


def _cells(h: int, w: int, regions: int) -> np.ndarray:
    """int64[h * w]: the region (of regions x regions, raster order) of each pixel of an h x w map."""
    return ((np.arange(h) * regions // h)[:, None] * regions + (np.arange(w) * regions // w)[None, :]).reshape(-1)


def _over_pixels(table: _Table, term: np.ndarray) -> tuple[np.ndarray, float]:
    """Each column's term (float[k], k = the table's columns) spread evenly over its pixels -> (float64[H*W] per
    pixel, the sum of the terms of columns with no pixel, which have nowhere to go)."""
    pixels = np.bincount(table.cols, minlength=len(term)).astype(np.float64)
    return (np.divide(term, pixels, out=np.zeros(len(term)), where=pixels > 0)[table.cols],
            float(term[pixels == 0].sum()))


def _denominator(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PQ's denominator tp + fp/2 + fn/2 -> (present: where a category has a segment (tp + fp + fn > 0), the
    denominator there and 1 elsewhere, safe to divide by)."""
    den = np.asarray(tp, np.float64) + 0.5 * np.asarray(fp, np.float64) + 0.5 * np.asarray(fn, np.float64)
    present = den > 0  # the counts are >= 0: the same as tp + fp + fn > 0
    return present, np.where(present, den, 1.0)


def average_pq(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, iou: np.ndarray,
               empty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """panopticapi's `pq_average` over the last axis: the mean over categories with tp+fp+fn > 0.

    Returns (pq, sq, rq, n) with the leading shape of the inputs; `empty` where n == 0.
    """
    present, denom = _denominator(tp, fp, fn)
    tp = np.asarray(tp, np.float64)
    pq_c = np.where(present, iou / denom, 0.0)
    sq_c = np.divide(iou, tp, out=np.zeros_like(tp), where=tp > 0)
    rq_c = np.where(present, tp / denom, 0.0)
    n = present.sum(-1)
    safe = np.maximum(n, 1)
    out = [np.where(n > 0, x.sum(-1) / safe, empty) for x in (pq_c, sq_c, rq_c)]
    return out[0], out[1], out[2], n


def pq_batch(preds: Sequence[dict], gts: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (pq, sq, rq), each float64 [N], averaged over the categories present in that image.

    An image where no category counts (no gt segment, no counted prediction) scores 1.0: nothing
    was there to find and nothing wrong was predicted.
    """
    return _per_image(pq_stats(preds, gts))


def _per_image(s: PQStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pq_batch's per-image (pq, sq, rq) from the counts (an image where nothing counts: 1.0)."""
    pq, sq, rq, _ = average_pq(s.tp, s.fp, s.fn, s.iou, empty=1.0)
    return pq, sq, rq


def pq_image(pred: dict, gt: dict) -> tuple[float, float, float]:
    """(pq, sq, rq) of one image's prediction against its ground truth."""
    pq, sq, rq = pq_batch([pred], [gt])
    return float(pq[0]), float(sq[0]), float(rq[0])


def pq_reward(outputs: Sequence[dict], targets: Sequence[dict]) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
    """The paper's panoptic reward: per-image PQ, FloatTensor[N]; parts {"sq", "rq"} FloatTensor[N] and
    where the PQ was earned, REGION_PART FloatTensor[N, REGIONS, REGIONS] (`pq_region_credit`)."""
    m = match_segments(outputs, targets)  # matched once for the values and the regions
    pq, sq, rq = _per_image(m.stats)
    as_tensor = lambda x: torch.from_numpy(x.astype(np.float32))  # noqa: E731
    return as_tensor(pq), {"sq": as_tensor(sq), "rq": as_tensor(rq),
                           REGION_PART: as_tensor(_region_credit(m, targets, REGIONS))}


def dataset_pq_shares(preds: Sequence[dict], gts: Sequence[dict], regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction's first-order share of the batch's dataset-level PQ (what `pq_compute` reports: per
    category, the IoU sums and tp + fp/2 + fn/2 pooled over all images, then averaged over the categories
    present) -> (share float64 [N], where it was earned float64 [N, regions, regions]).

    With the batch's pooled counts S_c (IoU sum), D_c (tp + fp/2 + fn/2) and PQ_c = S_c / D_c over its C
    categories, output i's share is PQ + sum_c (s_ic - PQ_c d_ic) / (C D_c / N): the batch's PQ, plus how far
    output i moves it, to first order, against an output with the batch's own per-category rates (so the
    shares average to the batch's PQ exactly). Per-image PQ weighs every image, and every category within an
    image, the same; this weighs each segment as the dataset metric does: a matched gt segment earns
    (IoU - PQ_c), a missed gt segment or a false positive costs PQ_c / 2, each scaled by 1 / (C D_c / N)
    (rare categories weigh more). The regions: each term spread evenly over its segment's pixels (a false
    positive's on its predicted pixels), the batch's PQ evenly over the image; they sum to the share.
    """
    return _dataset_shares(match_segments(preds, gts), gts, regions)


def _dataset_shares(m: Matching, gts: Sequence[dict], regions: int) -> tuple[np.ndarray, np.ndarray]:
    s, n = m.stats, len(m.gt_tables)
    out = np.zeros((n, regions, regions))
    if n == 0:
        return np.zeros(0), out
    present_i, den = _denominator(s.tp, s.fp, s.fn)
    den = np.where(present_i, den, 0.0)  # (N, C), 0 where an image has no segment of a category
    pooled = den.sum(0)  # (C,)
    present = pooled > 0
    counted = int(present.sum())
    pq_c = np.divide(s.iou.sum(0), pooled, out=np.zeros_like(pooled), where=present)
    # the batch's PQ by the metric's own rule (pq_batch's 1.0 where nothing counts anywhere)
    batch_pq = float(average_pq(s.tp.sum(0), s.fp.sum(0), s.fn.sum(0), s.iou.sum(0), empty=1.0)[0])
    weight = np.divide(n, counted * pooled, out=np.zeros_like(pooled), where=present)  # (C,)
    share = batch_pq + ((s.iou - pq_c * den) * weight).sum(1)
    for i, (gt_t, pred_t) in enumerate(zip(m.gt_tables, m.pred_tables)):
        h, w = np.asarray(gts[i]["map"]).shape
        spread = np.zeros(h * w)
        left = batch_pq  # mass spread evenly over the image: the batch's PQ and terms of segments with no pixels
        if counted:  # else every term is 0
            cat_g, cat_p = m.gt_cat[i], m.pred_cat[i]
            gt_term = (np.where(m.gt_iou[i] > 0, m.gt_iou[i] - pq_c[cat_g], 0.0)  # matched: IoU - PQ_c
                       - np.where(m.fn[i], 0.5 * pq_c[cat_g], 0.0)) * weight[cat_g]  # missed: -PQ_c / 2
            fp_term = -np.where(m.fp[i], 0.5 * pq_c[cat_p], 0.0) * weight[cat_p]  # false positive: -PQ_c / 2
            for table, term in ((gt_t, gt_term), (pred_t, fp_term)):
                per_pixel, unplaced = _over_pixels(table, term[:len(table.is_seg)])
                spread += per_pixel
                left += unplaced
        spread += left / (h * w)
        out[i] = np.bincount(_cells(h, w, regions), weights=spread, minlength=regions * regions).reshape(regions, regions)
    return share, out


def pq_dataset_reward(outputs: Sequence[dict], targets: Sequence[dict]) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
    """A departure from the paper (docs/method.md): each output's first-order share of the batch's dataset-level
    PQ (`dataset_pq_shares`), the metric `pq_compute` reports, instead of its own image's PQ; parts: the
    per-image "pq" beside it and REGION_PART, where the share was earned (for train.credit = "local")."""
    m = match_segments(outputs, targets)  # matched once for the shares, their regions and the per-image PQ
    share, regions = _dataset_shares(m, targets, REGIONS)
    pq, _, _ = _per_image(m.stats)
    as_tensor = lambda x: torch.from_numpy(np.asarray(x, np.float32))  # noqa: E731
    return as_tensor(share), {"pq": as_tensor(pq), REGION_PART: as_tensor(regions)}
