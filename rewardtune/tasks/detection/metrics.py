"""COCO box metrics, exactly as pycocotools' COCOeval computes them (its printing silenced).

Keys follow COCOeval.stats: map (AP@[.5:.95]), ap50, ap75, ap_small, ap_medium, ap_large, ar1,
ar10, ar100, ar_small, ar_medium, ar_large; -1 where COCOeval has nothing to average (e.g. no
small ground truths), as COCOeval itself reports. Plus num_detections.
With no detections at all every metric is 0 (pycocotools' loadRes cannot load an empty list).
A box needs a positive width and height: a results file with any other is refused, and a decoded box
of zero extent (both corners in the same bin) is left out of the results (it could match nothing).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Hashable
from typing import Any, Sequence

import numpy as np

from ...data.files import read_json
from ...errors import DataError
from .data import parse_instances

STAT_NAMES = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
              "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


def eval_ground_truth(images: Sequence[dict], annotations: Sequence[dict], categories: Sequence[dict]) -> dict:
    """A COCO gt dict for COCOeval; annotations get `area` (w*h) and `iscrowd` (0) when missing."""
    anns = []
    for ann in annotations:
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        anns.append(ann)
    return {"images": [{"id": im["id"], "width": im["width"], "height": im["height"]} for im in images],
            "annotations": anns, "categories": [{"id": c["id"], "name": c["name"]} for c in categories]}


def check_results(results: Any, gt: dict, source: str = "results") -> None:
    """A COCO results list: [{image_id, category_id, bbox [x, y, w, h] with w, h > 0, score}] on known ids."""
    if not isinstance(results, list):
        raise DataError(f"{source}: expected a list of detections")
    image_ids = {im["id"] for im in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    known = lambda v, ids: isinstance(v, Hashable) and v in ids  # noqa: E731  (a list id is no id)
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not all(k in r for k in ("image_id", "category_id", "bbox", "score")):
            raise DataError(f"{source}: detection #{i} needs image_id, category_id, bbox and score")
        if not (isinstance(r["bbox"], list) and len(r["bbox"]) == 4 and all(map(number, r["bbox"]))
                and number(r["score"])):
            raise DataError(f"{source}: detection #{i}: bbox must be 4 numbers and score a number")
        if not known(r["image_id"], image_ids):
            raise DataError(f"{source}: detection #{i}: unknown image_id {r['image_id']!r}")
        if not known(r["category_id"], category_ids):
            raise DataError(f"{source}: detection #{i}: unknown category_id {r['category_id']!r}")
        for field, size in (("width", r["bbox"][2]), ("height", r["bbox"][3])):
            if size <= 0:  # pycocotools scores such a box without a word
                raise DataError(f"{source}: detection #{i} (image_id {r['image_id']!r}): bbox {field} must be > 0, "
                                f"got {size!r}")


def coco_metrics(gt: dict, results: Sequence[dict], source: str = "results") -> dict[str, float]:
    """COCOeval (bbox) of `results` against the gt dict -> {name: float} (see the module docstring)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    check_results(results, gt, source)
    if not results:
        return {**{name: 0.0 for name in STAT_NAMES}, "num_detections": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, np.float64)
    return {**{name: float(v) for name, v in zip(STAT_NAMES, stats)}, "num_detections": float(len(results))}


def score_files(pred_path: str, gt_path: str) -> dict[str, float]:
    """Score a COCO results JSON against a COCO instances JSON (`rewardtune score detection`)."""
    inst = parse_instances(read_json(gt_path), gt_path)
    annotations = [a for anns in inst.annotations.values() for a in anns]
    gt = eval_ground_truth(inst.images, annotations, inst.categories)
    return coco_metrics(gt, read_json(pred_path), source=pred_path)


def to_coco_results(outputs: Sequence[dict], ids: Sequence[Any], sizes: Sequence[tuple[int, int]],
                    categories: Sequence[dict]) -> list[dict]:
    """Decoded outputs -> COCO results: bbox [x, y, w, h] in original pixels, category ids restored.

    `sizes[i]` is the (width, height) of image `ids[i]`; coordinates are rounded to 1e-4 px. A box of
    zero width or height is left out: it can match nothing, and a results file may not hold it.
    """
    results = []
    for output, image_id, (width, height) in zip(outputs, ids, sizes):
        boxes = np.asarray(output["boxes"], np.float64).reshape(-1, 4)
        for (ymin, xmin, ymax, xmax), cls, score in zip(boxes, output["classes"], output["scores"]):
            bbox = [round(float(v), 4) for v in (xmin * width, ymin * height, (xmax - xmin) * width,
                                                 (ymax - ymin) * height)]
            if bbox[2] > 0 and bbox[3] > 0:
                results.append({"image_id": image_id, "category_id": categories[int(cls)]["id"], "bbox": bbox,
                                "score": float(score)})
    return results
