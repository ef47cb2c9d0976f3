"""Object detection (docs/method.md#detection): boxes as tokens, the paper's rewards, COCO metrics.

    codec.py    DetectionCodec: boxes <-> [ymin, xmin, ymax, xmax, class, conf] tokens
    rewards.py  class-weighted matching reward ("map"), recall reward, matching helpers
    aux.py      the IoU-confidence loss on sampled boxes
    headroom.py the headroom before tuning (`rewardtune analyze`): oracle ranking, pooled samples, hedging
    score_head.py  the learned box score (task_options.score = "learned"), fitted on the model's own boxes
    verifier.py the box verifier score (task_options.score = "verifier"): a small CNN on each box's crop
    metrics.py  pycocotools COCOeval metrics; COCO results files
    data.py     COCO instances loader with validation
    viz.py      boxes drawn on an image

Task state (saved with checkpoints): {"categories": [{"id", "name"}, ...] sorted by id,
"class_counts": non-crowd training instances per category}; built from the train file when absent; and the
fitted "score_head" or "verifier" once calibrated.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ...config import task_options
from ...data.files import write_json_atomic
from ...errors import ConfigError, DataError
from ..base import DataCheck, FileScorer, Task
from .aux import iou_confidence_loss, self_iou_mle_loss
from .codec import BOX_ORDERS, SCORES, DetectionCodec
from .headroom import headroom
from .proposals import hedge_proposal, hedge_token_proposal
from .data import annotated_splits, check_instances, load_split, read_instances, split_paths, task_state
from .metrics import coco_metrics, eval_ground_truth, score_files, to_coco_results
from .rewards import class_weights, detection_stats, iou_conf_targets, map_reward, recall_reward
from .score_head import calibrate, spearman
from .verifier import calibrate as calibrate_verifier
from .viz import visualize

__all__ = ["DetectionOptions", "DetectionCodec", "make_task", "score_files"]

# `rewardtune score detection`: the files it reads and the function that scores them
FILE_SCORER = FileScorer(files=(("pred", "COCO results JSON: [{image_id, category_id, bbox [x, y, w, h], "
                                         "score}]"),
                                ("gt", "COCO instances JSON (images, annotations, categories)")), score=score_files)
# `rewardtune data check --task detection --root DIR`: ROOT/annotations/instances_<split>.json + ROOT/images/<split>/
DATA_CHECK = DataCheck(splits=partial(annotated_splits, prefix="instances_"), check=check_instances)


@dataclass
class DetectionOptions:
    bins: int = 64  # coordinate bins (the paper: 1000 on 640 px images)
    max_boxes: int = 12
    box_order: str = "random"  # "random" (the paper) | "canonical" (ymin, then xmin)
    # "auto" | "expected_iou" | "token_prob" | "learned" | "verifier" (see resolve_score, score_head.py, verifier.py)
    score: str = "auto"
    # the learned score (and the verifier) is refitted before every validation on the greedy output and this many samples
    # of the first calibrate_images training images (faint world, tuned model: 256 x 2 -> mAP 0.319,
    # 1024 x 4 -> 0.332; docs/results.md#detection)
    calibrate_images: int = 1024
    calibrate_samples: int = 4
    dup_penalty: float = 0.3  # weight of duplicates in the "map" reward
    aux_weight: float = 0.3  # weight of the IoU-confidence loss (0 = off)
    # MLE target of the conf token: "right" (always; the paper's targets) or "self_iou" (aux.self_iou_mle_loss)
    mle_conf: str = "right"
    # the conf token as a hedge decision ("wrong" = also emit the box with its second class; codec.py), a departure
    # from the paper: needs the token-probability (or verifier) score and no IoU-confidence loss; proposals then
    # hedge tokens
    hedge_token: bool = False
    # every box read as hedged at decoding (also emitted with its second class; codec.py), a departure: the post-hoc
    # hedge for any model; with the verifier score the strongest decoding measured on the faint world
    hedge_all: bool = False


def detection_options(config) -> DetectionOptions:
    """config.task_options -> DetectionOptions; unknown keys or bad values raise ConfigError."""
    opts = task_options(DetectionOptions, config.task_options, "detection")
    checks = [("bins", opts.bins >= 2, "must be >= 2"), ("max_boxes", opts.max_boxes >= 1, "must be >= 1"),
              ("box_order", opts.box_order in BOX_ORDERS, f"must be one of {', '.join(BOX_ORDERS)}"),
              ("score", opts.score in ("auto",) + SCORES, f"must be one of auto, {', '.join(SCORES)}"),
              ("dup_penalty", opts.dup_penalty >= 0, "must be >= 0"),
              ("aux_weight", opts.aux_weight >= 0, "must be >= 0"),
              ("mle_conf", opts.mle_conf in ("right", "self_iou"), "must be one of right, self_iou"),
              ("calibrate_images", opts.calibrate_images >= 1, "must be >= 1"),
              ("calibrate_samples", opts.calibrate_samples >= 0, "must be >= 0")]
    if opts.hedge_token:  # the conf token is then a hedge decision, not a score
        checks += [("aux_weight", opts.aux_weight == 0, "must be 0 with task_options.hedge_token (the conf "
                                                        "token is then a hedge, not a score)"),
                   ("score", opts.score in ("auto", "token_prob", "verifier"), "must be token_prob (or auto) or "
                                                                                "verifier with task_options.hedge_token"),
                   ("mle_conf", opts.mle_conf == "right", "must be right with task_options.hedge_token")]
    if opts.hedge_all:  # each copy takes its box's scores: only token probability and the verifier tell them apart
        checks += [("hedge_all", not opts.hedge_token, "cannot go with task_options.hedge_token (which lets the "
                                                       "model decide which boxes to hedge)"),
                   ("score", opts.score in ("token_prob", "verifier") or (opts.score == "auto" and
                                                                        resolve_score(opts, config) == "token_prob"),
                    "must be token_prob or verifier with task_options.hedge_all")]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"config key 'task_options.{key}': {why}, got {getattr(opts, key)!r}")
    return opts


def resolve_score(opts: DetectionOptions, config) -> str:
    """"auto": the learned expected IoU once the conf head is trained (reward stage with the aux
    loss on: task_options.aux_weight and train.aux_weight > 0), else token probability: an MLE
    model's conf target is always "right", so its conf scores carry no ranking signal (docs/results.md#medium-world)."""
    if opts.score != "auto":
        return opts.score
    trained = config.train.stage == "reward" and opts.aux_weight > 0 and config.train.aux_weight > 0
    return "expected_iou" if trained else "token_prob"


def _check_state(state: dict) -> dict:
    cats, counts = state.get("categories"), state.get("class_counts")
    if not isinstance(cats, list) or not isinstance(counts, list) or len(cats) != len(counts) or not cats:
        raise DataError("detection task state: needs non-empty 'categories' and 'class_counts' of equal length")
    return state


class _Splits(Mapping):
    """{"train", "val"} -> ImageSplit, each read on first access (eval never reads train images)."""

    def __init__(self, config, state: dict):
        self.config, self.state, self.loaded = config, state, {}

    def __getitem__(self, which: str):
        if which not in ("train", "val"):
            raise KeyError(which)
        if which not in self.loaded:
            self.loaded[which] = load_split(self.config, which, self.state)
        return self.loaded[which]

    def __iter__(self) -> Iterator[str]:
        return iter(("train", "val"))

    def __len__(self) -> int:
        return 2


def _metrics(outputs: Sequence[dict], targets: Sequence[dict], ids: Sequence[Any], categories: list) -> dict:
    """COCO metrics over exactly these images; the gt is rebuilt from the targets' annotations.

    When the outputs carry both scores (greedy eval does), the same boxes are also ranked by each
    score alone and by an oracle: map_by_expected_iou, map_by_token_prob, map_by_oracle_iou (the box's
    IoU with the ground truth it matches at 0.5, else 0: the best any score could do with these
    boxes). They say whether the learned conf head ranks better than token probability. With the
    learned score's features present, map_by_learned too; and spearman_<score>: the rank correlation
    of each score with that oracle IoU over all boxes.
    """
    sizes = [(t["width"], t["height"]) for t in targets]
    first: dict[Any, dict] = {}
    for image_id, target in zip(ids, targets):
        first.setdefault(image_id, target)
    images = [{"id": i, "width": t["width"], "height": t["height"]} for i, t in first.items()]
    gt = eval_ground_truth(images, [a for t in first.values() for a in t["annotations"]], categories)
    metrics = coco_metrics(gt, to_coco_results(outputs, ids, sizes, categories))
    if outputs and all("score_iou" in o and "score_prob" in o for o in outputs):
        oracle = iou_conf_targets(outputs, targets)
        rankings = {"expected_iou": [o["score_iou"] for o in outputs],
                    "token_prob": [o["score_prob"] for o in outputs]}
        for name in ("learned", "verifier"):
            if all(f"score_{name}" in o for o in outputs):
                rankings[name] = [o[f"score_{name}"] for o in outputs]
        truth = np.concatenate(oracle) if oracle else np.zeros(0)
        for name, scores in rankings.items():
            rho = spearman(np.concatenate(scores), truth) if len(truth) else float("nan")
            if np.isfinite(rho):  # undefined (left out) when every box has the same truth or score
                metrics[f"spearman_{name}"] = rho
        # ties among unmatched boxes (all 0) broken by token probability
        rankings["oracle_iou"] = [c + 1e-3 * np.asarray(o["score_prob"]) for o, c in zip(outputs, oracle)]
        for name, scores in rankings.items():
            if all(np.array_equal(o["scores"], s) for o, s in zip(outputs, scores)):  # the score used above
                metrics[f"map_by_{name}"] = metrics["map"]
                continue
            ranked = [{**o, "scores": s} for o, s in zip(outputs, scores)]
            metrics[f"map_by_{name}"] = coco_metrics(gt, to_coco_results(ranked, ids, sizes, categories))["map"]
    return metrics


def _write_predictions(outputs: Sequence[dict], targets: Sequence[dict], ids: Sequence[Any], out_dir: str,
                       categories: list) -> None:
    """out_dir/detections.json: COCO results in the original pixels of each target's image, atomically."""
    sizes = [(t["width"], t["height"]) for t in targets]
    write_json_atomic(to_coco_results(outputs, ids, sizes, categories), os.path.join(out_dir, "detections.json"))


def target_for_image(image: np.ndarray) -> dict:
    """A user's image without annotations (`predict`): no boxes, its original size."""
    return {"boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64),
            "width": int(image.shape[1]), "height": int(image.shape[0]), "annotations": []}


def box_tokens(output: dict) -> np.ndarray:
    """Task.item_tokens: the [start, stop) token positions of each decoded box, its six tokens -> int64[k, 2]."""
    conf = np.asarray(output["conf_pos"], np.int64).reshape(-1)
    return np.stack([conf - 5, conf + 1], axis=1)


def _calibrate(model, split, seed: int, codec, state: dict, opts: DetectionOptions) -> dict:
    """Refit the learned score or the verifier on the model's own boxes of training images (score_head.calibrate,
    verifier.calibrate)."""
    fit = calibrate_verifier if codec.score == "verifier" else calibrate
    return fit(model, split, codec, state, iou_conf_targets, images=opts.calibrate_images,
               samples=opts.calibrate_samples, seed=seed)


def make_task(config, state: Optional[dict] = None) -> Task:
    """The detection Task; `state` from a checkpoint, or built from the train annotations."""
    opts = detection_options(config)
    if state is None:
        train_file = split_paths(config, "train")[0]
        state = task_state(read_instances(train_file), config.data.max_train_images)
    state = _check_state(state)
    categories = state["categories"]
    codec = DetectionCodec(len(categories), opts.bins, opts.max_boxes, opts.box_order, resolve_score(opts, config),
                           score_head=state.get("score_head"), hedge_token=opts.hedge_token,
                           verifier=state.get("verifier"), hedge_all=opts.hedge_all)
    weights = class_weights(state["class_counts"])
    splits = _Splits(config, state)
    aux = None
    if opts.aux_weight > 0:
        aux = partial(iou_confidence_loss, no_object_token=codec.no_object_token, weight=opts.aux_weight)
    return Task(
        name="detection",
        codec=codec,
        datasets=lambda: splits,
        rewards={"map": partial(map_reward, weights=weights, dup_penalty=opts.dup_penalty),
                 "recall": recall_reward},
        metrics=partial(_metrics, categories=categories),
        write_predictions=partial(_write_predictions, categories=categories),
        visualize=partial(visualize, names=[c["name"] for c in categories]),
        aux_loss=aux,
        mle_loss=partial(self_iou_mle_loss, codec=codec) if opts.mle_conf == "self_iou" else None,
        item_tokens=box_tokens,
        propose=partial(hedge_token_proposal if opts.hedge_token else hedge_proposal, codec),
        headroom=partial(headroom, codec=codec, metrics=partial(_metrics, categories=categories)),
        calibrate=(partial(_calibrate, codec=codec, state=state, opts=opts)
                   if codec.score in ("learned", "verifier") else None),
        target_for_image=target_for_image,
        sample_stats=detection_stats,
        state=state,
        primary_metric="map",
        undefined_metric=-1.0,  # COCOeval's value where an area range holds no objects
    )
