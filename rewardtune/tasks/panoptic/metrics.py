"""Dataset PQ / SQ / RQ (all, things, stuff), as panopticapi's `pq_compute` computes them.

Per category, tp / fp / fn and the IoU sum of the true positives are accumulated over all images;
each average is over the categories (of the gt JSON) with tp + fp + fn > 0, things and stuff split
by `isthing`. Values are fractions in [0, 1], as panopticapi returns them (it prints them x100).
Where panopticapi would divide by zero (no category counted in a group) the value is 0.0.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from ...data.files import inside, require_folder
from ...errors import DataError
from .io import check_segments, full_gt, read_panoptic_json, read_png_ids
from .pq import PQStats, average_pq, pq_stats

METRIC_NAMES = ("pq", "sq", "rq", "pq_things", "sq_things", "rq_things", "pq_stuff", "sq_stuff", "rq_stuff")


class PQTotals:
    """Per-category tp, fp, fn, IoU sums accumulated over images."""

    def __init__(self) -> None:
        self.per_cat: dict[int, np.ndarray] = {}  # category id -> [tp, fp, fn, iou]

    def add(self, stats: PQStats) -> None:
        sums = np.stack([stats.tp.sum(0), stats.fp.sum(0), stats.fn.sum(0), stats.iou.sum(0)], 1)  # (C, 4)
        for cat, row in zip(stats.categories.tolist(), sums):
            self.per_cat[cat] = self.per_cat.get(cat, np.zeros(4)) + row

    def results(self, categories: Sequence[dict]) -> dict[str, float]:
        """{pq, sq, rq, pq_things, ..., rq_stuff} over the given categories ({id, isthing})."""
        out = {}
        categories = list({int(c["id"]): c for c in categories}.values())  # by id, as panopticapi's dict
        for suffix, want in (("", None), ("_things", True), ("_stuff", False)):
            rows = [self.per_cat.get(int(c["id"]), np.zeros(4)) for c in categories
                    if want is None or (int(c.get("isthing", 0)) == 1) == want]
            table = np.array(rows, np.float64).reshape(-1, 4)
            pq, sq, rq, _ = average_pq(table[:, 0], table[:, 1], table[:, 2], table[:, 3], empty=0.0)
            out.update({f"pq{suffix}": float(pq), f"sq{suffix}": float(sq), f"rq{suffix}": float(rq)})
        return out


def panoptic_metrics(outputs: Sequence[dict], targets: Sequence[dict], categories: Sequence[dict],
                     chunk: int = 64) -> dict[str, float]:
    """Dataset metrics of decoded outputs against loaded targets, at the targets' original resolution."""
    totals = PQTotals()
    for start in range(0, len(outputs), chunk):
        gts = [full_gt(t) for t in targets[start:start + chunk]]
        totals.add(pq_stats(outputs[start:start + chunk], gts))
    return totals.results(categories)


def _pairs(pred_json: str, gt_json: str) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """(gt annotation, pred annotation) for every gt image, and the gt categories."""
    gt = read_panoptic_json(gt_json, need_categories=True)
    pred = read_panoptic_json(pred_json, need_categories=False)
    by_image = {}
    for i, ann in enumerate(pred["annotations"]):
        if ann["image_id"] in by_image:
            raise DataError(f"{pred_json}: annotation {i}: image_id {ann['image_id']} has more than one prediction")
        by_image[ann["image_id"]] = ann
    pairs = []
    for ann in gt["annotations"]:
        if ann["image_id"] not in by_image:
            raise DataError(f"{pred_json}: no prediction for the image with id {ann['image_id']}")
        pairs.append((ann, by_image[ann["image_id"]]))
    return pairs, gt["categories"]


def _read_pair(gt_ann: dict, pred_ann: dict, paths: dict, category_ids: set) -> tuple[dict, dict]:
    gt_png = inside(paths["gt_dir"], gt_ann["file_name"], context=f"{paths['gt_json']}: image {gt_ann['image_id']}")
    pred_png = inside(paths["pred_dir"], pred_ann["file_name"],
                      context=f"{paths['pred_json']}: image {pred_ann['image_id']}")
    gt_map, pred_map = read_png_ids(gt_png), read_png_ids(pred_png)
    if gt_map.shape != pred_map.shape:
        raise DataError(f"{pred_png}: size {pred_map.shape[1]}x{pred_map.shape[0]} differs from the ground "
                        f"truth's {gt_map.shape[1]}x{gt_map.shape[0]} ({gt_png})")
    check_segments(pred_map, pred_ann["segments_info"], pred_png, paths["pred_json"], category_ids)
    check_segments(gt_map, gt_ann["segments_info"], gt_png, paths["gt_json"], category_ids, all_in_png=False)
    pred = {"map": pred_map, "segments": pred_ann["segments_info"]}
    return pred, {"map": gt_map, "segments": gt_ann["segments_info"]}


def read_files(pred_json: str, pred_dir: str, gt_json: str,
               gt_dir: str) -> tuple[Iterator[tuple[dict, dict]], list[dict]]:
    """(pred, gt) panoptic dicts of every gt image, read one at a time, and the gt categories. Missing or
    malformed files, ids in a PNG missing from its JSON (or the reverse, for predictions), unknown
    categories and size mismatches raise DataError with one line naming the file."""
    pairs, categories = _pairs(pred_json, gt_json)
    for folder in (gt_dir, pred_dir):
        require_folder(folder, "PNG folder")
    paths = {"pred_json": pred_json, "pred_dir": pred_dir, "gt_json": gt_json, "gt_dir": gt_dir}
    category_ids = {int(c["id"]) for c in categories}
    return (_read_pair(gt_ann, pred_ann, paths, category_ids) for gt_ann, pred_ann in pairs), categories


def score_files(pred_json: str, pred_dir: str, gt_json: str, gt_dir: str) -> dict[str, Any]:
    """Score COCO panoptic predictions (JSON + PNG folder) against ground truth, as panopticapi.

    Returns {pq, sq, rq, pq_things, sq_things, rq_things, pq_stuff, sq_stuff, rq_stuff} (fractions);
    bad files raise DataError as `read_files` says.
    """
    pairs, categories = read_files(pred_json, pred_dir, gt_json, gt_dir)
    totals = PQTotals()
    for pred, gt in pairs:
        totals.add(pq_stats([pred], [gt]))
    return totals.results(categories)
