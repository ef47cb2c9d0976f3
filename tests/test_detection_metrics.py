"""COCO metrics: identical to pycocotools' COCOeval on the same files; empty and invalid results."""
import contextlib
import io
import json

import numpy as np
import pytest

from rewardtune.errors import DataError
from rewardtune.tasks.detection.metrics import STAT_NAMES, coco_metrics, score_files


def random_gt_and_results(seed=0, num_images=6):
    rng = np.random.default_rng(seed)
    images = [{"id": 10 + i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in range(num_images)]
    categories = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]
    anns, results = [], []
    for im in images:
        for _ in range(rng.integers(1, 5)):
            x, y = rng.uniform(0, 40), rng.uniform(0, 30)
            w, h = rng.uniform(2, 64 - x), rng.uniform(2, 48 - y)
            cat = int(rng.choice([3, 7]))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.1)})
            if rng.random() < 0.8:  # a jittered detection, sometimes of the wrong class
                jit = rng.normal(0, 2, 4)
                results.append({"image_id": im["id"], "category_id": cat if rng.random() < 0.8 else 10 - cat,
                                "bbox": [x + jit[0], y + jit[1], max(1, w + jit[2]), max(1, h + jit[3])],
                                "score": float(rng.random())})
    return {"images": images, "annotations": anns, "categories": categories}, results


def write(tmp_path, gt, results):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(results))
    return str(gt_path), str(pred_path)


def cocoeval_stats(gt_path, pred_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        ev = COCOeval(gt, gt.loadRes(pred_path), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_cocoeval_on_the_same_files(tmp_path, seed):
    gt, results = random_gt_and_results(seed)
    gt_path, pred_path = write(tmp_path, gt, results)
    ours = score_files(pred_path, gt_path)
    expected = cocoeval_stats(gt_path, pred_path)
    np.testing.assert_allclose([ours[k] for k in STAT_NAMES], expected, atol=1e-6)
    assert 0.05 < ours["map"] < 0.99 and ours["num_detections"] == len(results)
    assert coco_metrics(gt, results) == ours


def test_empty_results_give_zeros(tmp_path):
    gt, _ = random_gt_and_results()
    gt_path, pred_path = write(tmp_path, gt, [])
    out = score_files(pred_path, gt_path)
    assert all(out[k] == 0.0 for k in STAT_NAMES) and out["num_detections"] == 0


@pytest.mark.parametrize("bad, needle", [
    ({"image_id": 999}, "unknown image_id 999"),
    ({"category_id": 5}, "unknown category_id 5"),
    ({"bbox": [1, 2, 3]}, "bbox"),
    ({"score": "high"}, "score"),
    ({"bbox": [1, 2, -3, 4]}, "detection #0 (image_id 10): bbox width must be > 0, got -3"),
    ({"bbox": [1, 2, 3, 0]}, "detection #0 (image_id 10): bbox height must be > 0, got 0"),
    ({"bbox": [1, 2, 3, -0.5]}, "detection #0 (image_id 10): bbox height must be > 0, got -0.5"),
])
def test_invalid_results_name_the_file(tmp_path, bad, needle):
    gt, results = random_gt_and_results()
    results[0].update(bad)
    gt_path, pred_path = write(tmp_path, gt, results)
    with pytest.raises(DataError) as err:
        score_files(pred_path, gt_path)
    msg = str(err.value)
    assert pred_path in msg and needle in msg and "\n" not in msg


def test_results_must_be_a_list(tmp_path):
    gt, _ = random_gt_and_results()
    gt_path, pred_path = write(tmp_path, gt, {"detections": []})
    with pytest.raises(DataError, match="expected a list"):
        score_files(pred_path, gt_path)


def test_a_decoded_box_of_zero_extent_is_left_out_of_the_results(tmp_path):
    """Both corners in one bin: no box a results file may hold; the written file stays scorable."""
    from rewardtune.tasks.detection.metrics import to_coco_results
    categories = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.3, 0.7], [0.1, 0.4, 0.9, 0.4]], np.float32)
    output = {"boxes": boxes, "classes": np.array([0, 1, 0]), "scores": np.array([0.9, 0.8, 0.7])}
    results = to_coco_results([output], [10], [(64, 48)], categories)
    assert [(r["category_id"], r["score"]) for r in results] == [(3, pytest.approx(0.9))]
    assert results[0]["bbox"] == pytest.approx([0.2 * 64, 0.1 * 48, 0.4 * 64, 0.4 * 48])
    gt, _ = random_gt_and_results()
    gt_path, pred_path = write(tmp_path, gt, results)
    assert score_files(pred_path, gt_path)["num_detections"] == 1
