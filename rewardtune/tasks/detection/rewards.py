"""Detection rewards: the paper's class-weighted matching reward ("map") and the recall reward.

Pure functions of decoded outputs and targets (dicts with "boxes" [k, 4] (ymin, xmin, ymax, xmax)
in [0, 1] and "classes" [k]). A batch of S samples is padded to [S, K] predictions and [S, M] ground
truths and matched for all samples and thresholds at once; the only Python loop is over the M
ground-truth slots.

Choices, settled against the released reward (big_vision
`configs/proj/reward_tune/detection_reward.py`, `_reward_fn_thr`):
- No normalisation by the number of ground truths: big_vision returns
  `match_reward - nms_w * nms_penalty`, a sum of class weights, so an image with more objects has a
  larger reward scale. The leave-one-out baseline is per image, so this only scales the advantage.
- Weights `w = 1 / (n + 0.05 * sum n)`, times `C / sum(w)` (mean 1), as big_vision.
- IoU must be strictly greater than the threshold (`jnp.where(iou > thr, ...)`); all ten thresholds
  0.50..0.95 are used (big_vision's `f"{thr:0.1f}"` keys collapse them to five: docs/method.md#detection).
- Matching: The paper's greedy rule (docs/method.md#detection), ground truths visited by index, each taking its highest-IoU
  unclaimed prediction (ties: the earlier prediction). big_vision instead keeps, for each
  prediction, only its best ground truth, then lets each ground truth take its best such prediction;
  the two agree except when a prediction's best ground truth is already taken (greedy can still
  match it to another ground truth; big_vision counts it as a duplicate).
- Duplicates: predictions left unmatched that overlap a same-class ground truth at IoU > t, each
  counted once with the weight of its class (big_vision: one argmax ground truth per prediction, so
  also counted once).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..base import ITEM_PART

THRESHOLDS = np.array([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])


def class_weights(counts: Sequence[float], smooth: float = 0.05) -> np.ndarray:
    """Per-class weights w_c = 1 / (n_c + smooth * sum n), rescaled to mean 1 -> float64[C].

    Rare classes are worth more. With no counts at all (sum 0) every class weighs 1.
    """
    n = np.asarray(counts, np.float64).reshape(-1)
    if n.size == 0 or n.sum() <= 0:
        return np.ones(n.size, np.float64)
    w = 1.0 / (n + smooth * n.sum())
    return w * n.size / w.sum()


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [..., K, 4] and b [..., M, 4] (ymin, xmin, ymax, xmax) -> [..., K, M]."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    inter_h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_h * inter_w
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _pad(items: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> boxes float64[S, K, 4], classes int64[S, K] (-1 = padding), valid bool[S, K]."""
    k = max([len(np.asarray(x["classes"]).reshape(-1)) for x in items] + [0])
    boxes = np.zeros((len(items), k, 4))
    classes = np.full((len(items), k), -1, np.int64)
    for i, x in enumerate(items):
        c = np.asarray(x["classes"], np.int64).reshape(-1)
        boxes[i, : len(c)] = np.asarray(x["boxes"], np.float64).reshape(-1, 4)
        classes[i, : len(c)] = c
    return boxes, classes, classes >= 0


class Pairs(NamedTuple):
    """Predictions x ground truths of a batch of samples."""

    iou: np.ndarray  # (S, K, M)
    allowed: np.ndarray  # (S, K, M) both real and of the same class
    pred_classes: np.ndarray  # (S, K), -1 = padding
    gt_classes: np.ndarray  # (S, M), -1 = padding


def pairs(outputs: Sequence[dict], targets: Sequence[dict]) -> Pairs:
    if len(outputs) != len(targets):
        raise ValueError(f"detection reward: {len(outputs)} outputs but {len(targets)} targets")
    pb, pc, pv = _pad(outputs)
    gb, gc, gv = _pad(targets)
    allowed = (pc[:, :, None] == gc[:, None, :]) & pv[:, :, None] & gv[:, None, :]
    return Pairs(pairwise_iou(pb, gb), allowed, pc, gc)


def greedy_match(iou: np.ndarray, allowed: np.ndarray, thresholds: np.ndarray,
                 strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each ground truth, by index, takes its highest-IoU unclaimed allowed prediction.

    Args: iou, allowed [S, K, M]; thresholds [T]; a pair can match when IoU > t (>= t if not strict).
    Returns: match int64[S, T, M] (prediction index or -1), claimed bool[S, T, K].
    """
    s, k, m = iou.shape
    thr = np.asarray(thresholds, np.float64)[None, :, None]  # (1, T, 1)
    match = np.full((s, thr.shape[1], m), -1, np.int64)
    claimed = np.zeros((s, thr.shape[1], k), bool)
    if k == 0:
        return match, claimed
    for j in range(m):
        col = iou[:, None, :, j]  # (S, 1, K)
        ok = ((col > thr) if strict else (col >= thr)) & allowed[:, None, :, j] & ~claimed  # (S, T, K)
        best = np.where(ok, col, -1.0).argmax(-1)  # (S, T)
        has = ok.any(-1)
        match[:, :, j] = np.where(has, best, -1)
        si, ti = np.nonzero(has)
        claimed[si, ti, best[si, ti]] = True
    return match, claimed


def _recall(matches: np.ndarray, num_gt: np.ndarray, num_pred: np.ndarray) -> np.ndarray:
    """Matched fraction of ground truths; an image without any: 1 if nothing predicted, else 0."""
    empty = np.where(num_pred == 0, 1.0, 0.0)
    return np.where(num_gt > 0, matches / np.maximum(num_gt, 1), empty)


def _tensors(parts: dict) -> dict:
    return {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in parts.items()}


def map_reward(outputs: Sequence[dict], targets: Sequence[dict], weights: Sequence[float],
               dup_penalty: float = 0.3) -> tuple[torch.Tensor, dict]:
    """The paper's reward -> (FloatTensor[S], parts), mean over t in 0.50..0.95 of
    R_t = sum of w[class] over matched ground truths - dup_penalty * sum of w[class] over duplicates.

    Parts (FloatTensor[S]): matches and duplicates (means over t), recall50 (matched fraction at
    t = 0.5, strict), num_boxes; and "per_item" (Task ITEM_PART, FloatTensor[S, K], 0 past an output's
    boxes): each box's own share, the mean over t of w[its class] if it is matched at t, minus
    dup_penalty * w[its class] if it is a duplicate at t. A matched ground truth and the box it claims
    share the class, so the shares of an output sum to its reward (train.credit = "token").
    """
    p = pairs(outputs, targets)
    w = np.asarray(weights, np.float64)
    match, claimed = greedy_match(p.iou, p.allowed, THRESHOLDS)  # (S, T, M), (S, T, K)
    w_gt = np.where(p.gt_classes >= 0, w[np.maximum(p.gt_classes, 0)], 0.0)  # (S, M)
    w_pred = np.where(p.pred_classes >= 0, w[np.maximum(p.pred_classes, 0)], 0.0)  # (S, K)
    matched_w = ((match >= 0) * w_gt[:, None, :]).sum(-1)  # (S, T)
    overlaps = ((p.iou[:, None] > THRESHOLDS[None, :, None, None]) & p.allowed[:, None]).any(-1)  # (S, T, K)
    dups = overlaps & ~claimed  # (S, T, K)
    reward = (matched_w - dup_penalty * (dups * w_pred[:, None, :]).sum(-1)).mean(-1)  # (S,)
    per_box = ((claimed * w_pred[:, None, :]) - dup_penalty * (dups * w_pred[:, None, :])).mean(1)  # (S, K)
    num_gt, num_pred = (p.gt_classes >= 0).sum(-1), (p.pred_classes >= 0).sum(-1)
    parts = {"matches": (match >= 0).sum(-1).mean(-1), "duplicates": dups.sum(-1).mean(-1),
             "recall50": _recall((match[:, 0] >= 0).sum(-1), num_gt, num_pred), "num_boxes": num_pred,
             ITEM_PART: per_box}
    return torch.as_tensor(reward, dtype=torch.float32), _tensors(parts)


def recall_reward(outputs: Sequence[dict], targets: Sequence[dict]) -> tuple[torch.Tensor, dict]:
    """Fraction of ground truths matched (same class, IoU >= 0.5) -> (FloatTensor[S], parts).

    An image without ground truth scores 1 when nothing is predicted and 0 otherwise, so the
    reward still prefers silence on empty images. Parts: matches, num_boxes.
    """
    p = pairs(outputs, targets)
    match, _ = greedy_match(p.iou, p.allowed, THRESHOLDS[:1], strict=False)
    matches = (match[:, 0] >= 0).sum(-1)
    num_gt, num_pred = (p.gt_classes >= 0).sum(-1), (p.pred_classes >= 0).sum(-1)
    reward = _recall(matches, num_gt, num_pred)
    return torch.as_tensor(reward, dtype=torch.float32), _tensors({"matches": matches, "num_boxes": num_pred})


def iou_conf_targets(outputs: Sequence[dict], targets: Sequence[dict]) -> list[np.ndarray]:
    """Per predicted box, the IoU with the ground truth it matches at t = 0.5 (strict), else 0.

    -> one float32[k_i] per output. Duplicates get 0, unlike big_vision (which gives every box
    the IoU with its best same-class ground truth above 0.5): COCO counts duplicates as false
    positives, so a score that ranks them low is what mAP rewards.
    """
    p = pairs(outputs, targets)
    match, _ = greedy_match(p.iou, p.allowed, THRESHOLDS[:1])
    conf = np.zeros(p.pred_classes.shape)  # (S, K)
    si, gi = np.nonzero(match[:, 0] >= 0)
    pi = match[si, 0, gi]
    conf[si, pi] = p.iou[si, pi, gi]
    counts = (p.pred_classes >= 0).sum(-1)
    return [conf[i, : counts[i]].astype(np.float32) for i in range(len(conf))]


def detection_stats(outputs: Sequence[dict], targets: Sequence[dict]) -> dict[str, float]:
    """Batch numbers for the training log, at IoU >= 0.5 (as COCO matches), same class.

    precision50 and recall50 pool the batch (matched / predicted, matched / ground truths); with
    nothing predicted precision50 is 0, with no ground truth recall50 is 1. With the hedge token
    (outputs carry "hedged"), hedges_per_image: the copies among the boxes.
    """
    if not outputs:
        return {"boxes_per_image": 0.0, "duplicates_per_image": 0.0, "precision50": 0.0, "recall50": 1.0}
    p = pairs(outputs, targets)
    match, claimed = greedy_match(p.iou, p.allowed, THRESHOLDS[:1], strict=False)
    overlaps = ((p.iou >= 0.5) & p.allowed).any(-1)  # (S, K)
    matched = int((match >= 0).sum())
    num_pred, num_gt = int((p.pred_classes >= 0).sum()), int((p.gt_classes >= 0).sum())
    hedges = {"hedges_per_image": sum(int(np.sum(o["hedged"])) for o in outputs) / len(outputs)} \
        if all("hedged" in o for o in outputs) else {}
    return {
        **hedges,
        "boxes_per_image": num_pred / len(outputs),
        "duplicates_per_image": float((overlaps & ~claimed[:, 0]).sum()) / len(outputs),
        "precision50": matched / num_pred if num_pred else 0.0,
        "recall50": matched / num_gt if num_gt else 1.0,
    }
