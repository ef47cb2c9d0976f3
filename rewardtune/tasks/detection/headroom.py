"""Headroom before tuning (`rewardtune analyze`): how much mAP the model's own outputs already hold.

On the analysed val images, mAP of
    greedy_map_by_<score>  the greedy boxes ranked by the model's own score, by token probability, by
                           expected IoU, by the learned score (once fitted) and by an oracle (the true IoU
                           with the matched ground truth, 0 for false positives and duplicates): what
                           better ranking alone could buy (`_metrics` of the task computes these);
    pooled_map_<n>         the boxes of the first n samples of each image pooled into one output and
                           ranked by token probability: what sampling could reach. Duplicates across
                           samples: class-wise NMS at IoU > POOL_NMS_IOU keeping the box of higher token
                           probability (a plain union would count every repeat of an object as a false
                           positive and crowd COCO's 100 detections an image). pooled_ar100_<n>: its recall;
    hedged_map             every greedy box also emitted a second time with its second most likely
                           class, scored by the token probability it would have had with that class token
                           (the class log-probability swapped in the mean of its five log-probs).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from .rewards import pairwise_iou

POOL_NMS_IOU = 0.7
POOL_SIZES = (1, 4, 16)  # and K, every sample of the pool


def class_nms(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by class-wise NMS: by descending score (ties: the earlier box), a box is dropped when
    its IoU with a kept box of its class is > `iou`. -> int64[kept] in descending score order."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    overlap = pairwise_iou(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(boxes, np.float64).reshape(-1, 4))
    kept: list[int] = []
    for i in order:
        if not any(classes[j] == classes[i] and overlap[i, j] > iou for j in kept):
            kept.append(int(i))
    return np.asarray(kept, np.int64)


def pool_samples(samples: Sequence[dict], nms_iou: float | None = POOL_NMS_IOU) -> dict:
    """The boxes of several decoded samples of one image as one output ranked by token probability
    ("scores" = "score_prob"); with `nms_iou`, class-wise NMS at that IoU, else the plain union."""
    boxes = np.concatenate([np.asarray(s["boxes"], np.float32).reshape(-1, 4) for s in samples] + [np.zeros((0, 4))])
    classes = np.concatenate([np.asarray(s["classes"], np.int64) for s in samples] + [np.zeros(0, np.int64)])
    scores = np.concatenate([np.asarray(s["score_prob"], np.float32) for s in samples] + [np.zeros(0)])
    keep = class_nms(boxes, classes, scores, nms_iou) if nms_iou is not None else np.arange(len(classes))
    return {"boxes": boxes[keep].astype(np.float32), "classes": classes[keep], "scores": scores[keep]}


def second_class(class_lp: np.ndarray, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per box, the most likely class other than the one emitted: class_lp float[k, C] (the distribution each
    class token was drawn from), drawn int[k] -> (second int[k], its log-prob, the emitted class's log-prob)."""
    lp = np.asarray(class_lp, np.float64).copy()
    rows = np.arange(len(drawn))
    emitted = lp[rows, drawn]
    lp[rows, drawn] = -np.inf
    second = lp.argmax(1)
    return second, lp[rows, second], emitted


def hedge_copies(class_lp: np.ndarray, drawn: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per box, its hedge: the second class (`second_class`) and the token probability the box would have had
    with that class token, `prob` (exp of the mean log-prob of its 5 tokens) with the class log-prob swapped in.
    -> (second int[k], score float64[k])."""
    second, second_lp, emitted = second_class(class_lp, drawn)
    return second, np.asarray(prob, np.float64) * np.exp((second_lp - emitted) / 5.0)


def hedge(output: dict, step_log_probs: torch.Tensor, class_token: int, num_classes: int) -> dict:
    """A decoded greedy output (ranked by token probability) plus, per box, a copy with its second most
    likely class (the most likely class other than the emitted one, from the distribution the class token
    was drawn from) scored exp(mean log-prob of its 5 tokens with that class's log-prob swapped in).
    With one class there is nothing to hedge: the output as it is, ranked by token probability."""
    boxes = np.asarray(output["boxes"], np.float32).reshape(-1, 4)
    classes, prob = np.asarray(output["classes"], np.int64), np.asarray(output["score_prob"], np.float64)
    if num_classes < 2 or len(classes) == 0:
        return {"boxes": boxes, "classes": classes, "scores": prob.astype(np.float32)}
    conf_pos = np.asarray(output["conf_pos"])
    # boxes the model hedged itself (codec.hedge_token) already hold their copy: only the others get one
    own = np.asarray(output.get("hedged", np.zeros(len(classes), bool)), bool)
    todo = ~np.isin(conf_pos, conf_pos[own])
    rows = step_log_probs[torch.as_tensor(conf_pos[todo] - 1)]  # (k', V): the class tokens' rows
    second, second_prob = hedge_copies(rows[:, class_token:class_token + num_classes].double().numpy(), classes[todo],
                                       prob[todo])
    return {"boxes": np.concatenate([boxes, boxes[todo]]), "classes": np.concatenate([classes, second]),
            "scores": np.concatenate([prob, second_prob]).astype(np.float32)}


def headroom(greedy: Sequence[tuple], samples: Sequence[Sequence[dict]], targets: Sequence[dict],
             ids: Sequence[Any], *, codec, metrics: Callable) -> dict[str, Any]:
    """The Task.headroom of detection (see the module docstring) -> {name: float}, and greedy_score:
    the name of the score greedy_map ranks by (the codec's).

    greedy[i]: (tokens, step_log_probs) of image i's greedy output; samples[i]: its K samples decoded
    with their step log-probs; metrics: the task's metrics fn (its `_metrics`)."""
    greedy_out = [codec.decode(tokens, lp) for tokens, lp in greedy]
    scored = metrics(greedy_out, targets, ids)
    out = {"greedy_map": scored["map"], "greedy_score": codec.score}
    out.update({f"greedy_{k}": v for k, v in scored.items() if k.startswith("map_by_")})
    k = min((len(s) for s in samples), default=0)
    for n in sorted({n for n in POOL_SIZES if n <= k} | ({k} if k else set())):
        pooled = metrics([pool_samples(s[:n]) for s in samples], targets, ids)
        out[f"pooled_map_{n}"], out[f"pooled_ar100_{n}"] = pooled["map"], pooled["ar100"]
    hedged = [hedge(o, lp, codec.class_token, codec.num_classes) for o, (_, lp) in zip(greedy_out, greedy)]
    out["hedged_map"] = metrics(hedged, targets, ids)["map"]
    return out
