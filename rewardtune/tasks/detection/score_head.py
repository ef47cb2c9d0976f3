"""A learned box score (`task_options.score = "learned"`): a departure from the paper, documented in
docs/method.md#detection.

The paper ranks boxes by the expected IoU read from the conf tokens; measured here, that head and a
linear readout of the decoder's last hidden state both rank boxes worse than token probability, while
the box tokens' own distributions say more (how spread each coordinate is, how close the class call
was, how much the model wanted to end the sequence instead of emitting the box). This head reads
those: per box, `box_features` turns the step log-probs of its six tokens (and the position before
it) into FEATURES, and a one-hidden-layer network maps them to a score in (0, 1), trained on the
model's own greedy and sampled boxes of training images with the target COCO rewards: the box's IoU
with the ground truth it matches at 0.5, 0 for a false positive or a duplicate (`iou_conf_targets`).

The fitted head is a small dict of lists kept in the task state, so it is saved with every checkpoint
and `eval`, `predict` and `score` (which reads the written detections) rank with the same score.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ...model.encdec import eval_mode, image_generator
from ..base import decode_all

FEATURES = (
    "logp_ymin", "logp_xmin", "logp_ymax", "logp_xmax", "logp_class",
    "entropy_ymin", "entropy_xmin", "entropy_ymax", "entropy_xmax", "entropy_class",
    "spread_ymin", "spread_xmin", "spread_ymax", "spread_xmax",  # coordinate std over the box side
    "class_margin", "logp_end_instead", "conf_logit", "index", "count", "height", "width",
    "overlap_earlier", "overlap_earlier_same_class",  # max IoU with an earlier box of the sequence (duplicates)
)
_CLIP = 30.0  # log-probs of masked tokens are -inf: clip every log-prob feature to [-30, 30]


def box_features(codec, groups: np.ndarray, starts: np.ndarray, lp: torch.Tensor) -> np.ndarray:
    """float32[k, len(FEATURES)] for the k boxes `groups` (int[k, 6] tokens) starting at `starts`.

    `lp`: FloatTensor[T, V], row t the log-distribution token t was drawn from.
    """
    k, B, C = len(groups), codec.bins, codec.num_classes
    if k == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    pos = torch.from_numpy(starts[:, None] + np.arange(6))
    rows = lp[pos].double().clamp(min=-_CLIP)  # (k, 6, V)
    probs = rows.exp()
    picked = rows.gather(2, torch.from_numpy(groups)[:, :, None]).squeeze(2)  # (k, 6)
    entropy = -(probs[:, :5] * rows[:, :5]).sum(-1)  # (k, 5); clipped log 0 terms are ~0
    bins = torch.arange(B, dtype=torch.float64)
    coord = probs[:, :4, :B] / probs[:, :4, :B].sum(-1, keepdim=True).clamp(min=1e-12)  # (k, 4, B)
    mean = (coord * bins).sum(-1)
    std = ((coord * (bins - mean[..., None]) ** 2).sum(-1)).sqrt()  # (k, 4) in bins
    g = torch.from_numpy(groups[:, :4]).double()
    side_y = (g[:, 2] - g[:, 0]).abs() + 1
    side_x = (g[:, 3] - g[:, 1]).abs() + 1
    spread = std / torch.stack([side_y, side_x, side_y, side_x], 1)
    top2 = rows[:, 4, codec.class_token:codec.class_token + C].topk(min(2, C), dim=-1).values
    margin = top2[:, 0] - top2[:, 1] if C > 1 else torch.full((k,), _CLIP, dtype=torch.float64)
    end_instead = lp[torch.from_numpy(starts), codec.end_token].double().clamp(min=-_CLIP)
    conf = (rows[:, 5, codec.right_token] - rows[:, 5, codec.wrong_token]).clamp(-_CLIP, _CLIP)
    index = torch.arange(k, dtype=torch.float64) / codec.max_boxes
    count = torch.full((k,), k / codec.max_boxes, dtype=torch.float64)
    overlap, same = _earlier_overlaps(codec.boxes_from_bins(groups[:, :4]), groups[:, 4])
    feats = torch.cat([picked[:, :5], entropy, spread, margin[:, None], end_instead[:, None], conf[:, None],
                       index[:, None], count[:, None], side_y[:, None] / B, side_x[:, None] / B,
                       torch.from_numpy(overlap)[:, None], torch.from_numpy(same)[:, None]], 1)
    return torch.nan_to_num(feats, nan=0.0, posinf=_CLIP, neginf=-_CLIP).numpy().astype(np.float32)


def _earlier_overlaps(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per box, the largest IoU with any earlier box of the sequence, and with an earlier box of its
    class (0 for the first): a duplicate shows as a high value."""
    b = boxes.astype(np.float64)
    lo, hi = np.maximum(b[:, None, :2], b[None, :, :2]), np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area[:, None] + area[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    earlier = np.tril(np.ones_like(iou, dtype=bool), -1)  # [i, j]: j before i
    same = earlier & (classes[:, None] == classes[None, :])
    return (np.where(earlier, iou, 0).max(1, initial=0.0), np.where(same, iou, 0).max(1, initial=0.0))


def apply_head(head: dict, features: np.ndarray) -> np.ndarray:
    """Scores float32[k] in (0, 1) of a fitted head (the dict `fit_head` returns) on features [k, F]."""
    if len(features) == 0:
        return np.zeros(0, np.float32)
    x = (features.astype(np.float64) - np.asarray(head["mean"])) / np.asarray(head["std"])
    hidden = np.maximum(x @ np.asarray(head["w1"]) + np.asarray(head["b1"]), 0.0)
    logit = hidden @ np.asarray(head["w2"]) + head["b2"]
    return (1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))).astype(np.float32)


def fit_head(features: np.ndarray, targets: np.ndarray, seed: int = 0, hidden: int = 32,
             iterations: int = 1000, lr: float = 1e-2, weight_decay: float = 1e-3) -> dict:
    """Fit the head by cross-entropy against soft targets in [0, 1] (full batch, Adam); deterministic
    for a given seed. -> {"features", "mean", "std", "w1", "b1", "w2", "b2"} (JSON-serialisable)."""
    x = torch.as_tensor(np.asarray(features, np.float64), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(targets, np.float64), dtype=torch.float32).clamp(0, 1)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"fit_head: need features [n, F] and targets [n] with n > 0, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    x = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(x.shape[1], hidden, generator=gen) / x.shape[1] ** 0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, generator=gen) / hidden ** 0.5).requires_grad_()
    b2 = torch.zeros((), requires_grad=True)
    params = [w1, b1, w2, b2]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(iterations):
            logit = torch.relu(x @ w1 + b1) @ w2 + b2
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    as_list = lambda t: t.detach().double().tolist()  # noqa: E731
    return {"features": list(FEATURES), "mean": as_list(mean), "std": as_list(std), "w1": as_list(w1),
            "b1": as_list(b1), "w2": as_list(w2), "b2": float(b2.detach()), "loss": float(loss.detach())}


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of `values`, ties given their average rank."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    r = np.empty(len(values), np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        r[order[s:e]] = (s + e - 1) / 2
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties averaged); nan when either side is constant or n < 2."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} vs {len(b)} values")
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


@torch.no_grad()
def generated(model, split, codec, indices: Sequence[int], samples: int, seed: int,
              batch_size: int = 64) -> Iterator[tuple[torch.Tensor, int, list, list]]:
    """The model's greedy output and `samples` samples (temperature 1) of each image split[indices], decoded
    with their step log-probs: per batch and kind, (images, n outputs per image, outputs, one target per
    output). Sampling uses its own generators (seeded by `seed` and the image's index), never the global RNG."""
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(indices), batch_size):
            chunk = list(indices[start:start + batch_size])
            images, tgt, _ = split.batch(chunk)
            images = images.to(device)
            runs = [model.generate(images, 1, greedy=True, return_step_log_probs=True)]
            if samples:
                runs.append(model.generate(images, samples, generator=[image_generator(seed, i, device) for i in chunk],
                                           return_step_log_probs=True))
            for gen, n in zip(runs, (1, samples)):
                yield images, n, decode_all(codec, gen, gen.step_log_probs.float().cpu()), [t for t in tgt for _ in range(n)]


def collect(model, split, codec, indices: Sequence[int], samples: int, seed: int,
            batch_size: int = 64) -> tuple[list, list]:
    """`generated`'s outputs, decoded with features -> (outputs, targets), one target per output."""
    outputs, targets = [], []
    for _, _, decoded, tgt in generated(model, split, codec, indices, samples, seed, batch_size):
        outputs += decoded
        targets += tgt
    return outputs, targets


def calibrate(model, split, codec, state: dict, iou_targets, images: int = 1024, samples: int = 4,
              seed: int = 0) -> dict:
    """Fit the head on the first `images` images of `split` (greedy + `samples` samples each) and
    install it: codec.score_head and state["score_head"]. -> logs (boxes used, fit Spearman)."""
    indices = list(range(min(images, len(split))))
    outputs, targets = collect(model, split, codec, indices, samples, seed)
    feats = np.concatenate([o["features"] for o in outputs]) if outputs else np.zeros((0, len(FEATURES)))
    if len(feats) == 0:
        return {"score_head_boxes": 0.0}
    truth = np.concatenate(iou_targets(outputs, targets))
    head = fit_head(feats, truth, seed=seed)
    codec.score_head = state["score_head"] = head
    return {"score_head_boxes": float(len(feats)), "score_head_fit_spearman": spearman(apply_head(head, feats), truth),
            "score_head_loss": head["loss"]}


def learned_scores(head: Optional[dict], features: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The head's scores, or `fallback` (token probability) before any head was fitted."""
    return fallback if head is None else apply_head(head, features)
