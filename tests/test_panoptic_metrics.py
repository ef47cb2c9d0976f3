"""Dataset PQ as panopticapi's pq_compute: a hand-computed accumulation, and a loop-by-loop reference."""
import numpy as np
import pytest

from rewardtune.tasks.panoptic.metrics import METRIC_NAMES, PQTotals, panoptic_metrics
from rewardtune.tasks.panoptic.pq import pq_stats



def pan(runs, segments):
    """A 1 x L panoptic from runs of (segment id, length); segments {id: category or (category, iscrowd)}."""
    ids = np.concatenate([np.full(n, i, np.int32) for i, n in runs])[None, :]
    segs = []
    for i, v in segments.items():
        cat, crowd = v if isinstance(v, tuple) else (v, 0)
        segs.append({"id": i, "category_id": cat, "iscrowd": crowd})
    return {"map": ids, "segments": segs}


CATEGORIES = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 3, "isthing": 0}, {"id": 4, "isthing": 0}]


def three_images():
    gts = [pan([(1, 20), (2, 20)], {1: 1, 2: 3}),
           pan([(1, 10), (2, 30)], {1: 2, 2: 3}),
           pan([(1, 20), (3, 10), (2, 10)], {1: 1, 3: 1, 2: 3})]
    preds = [pan([(7, 15), (8, 25)], {7: 1, 8: 3}),  # cat 1 IoU .75, cat 3 IoU .8
             pan([(7, 10), (8, 30)], {7: 1, 8: 3}),  # cat 1 FP, cat 2 FN, cat 3 IoU 1
             pan([(7, 20), (9, 6), (8, 14)], {7: 1, 9: 1, 8: 3})]  # cat 1 IoU 1 and .6, cat 3 IoU 10/14
    return preds, gts


def test_dataset_metric_equals_hand_computed_accumulation():
    preds, gts = three_images()
    totals = PQTotals()
    for p, g in zip(preds, gts):  # image by image, as panopticapi accumulates
        totals.add(pq_stats([p], [g]))
    got = totals.results(CATEGORIES)
    cat1 = (2.35 / 3.5, 2.35 / 3, 3 / 3.5)  # tp 3 (IoU .75 + 1 + .6), fp 1, fn 0
    cat2 = (0.0, 0.0, 0.0)  # fn 1
    iou3 = 0.8 + 1 + 10 / 14
    cat3 = (iou3 / 3, iou3 / 3, 1.0)  # category 4 never appears: left out of every average
    for k, name in enumerate(("pq", "sq", "rq")):
        assert got[name] == pytest.approx((cat1[k] + cat2[k] + cat3[k]) / 3, abs=1e-12)
        assert got[f"{name}_things"] == pytest.approx((cat1[k] + cat2[k]) / 2, abs=1e-12)
        assert got[f"{name}_stuff"] == pytest.approx(cat3[k], abs=1e-12)
    assert set(got) == set(METRIC_NAMES)


def test_batched_accumulation_equals_image_by_image():
    preds, gts = three_images()
    one = PQTotals()
    for p, g in zip(preds, gts):
        one.add(pq_stats([p], [g]))
    batched = PQTotals()
    batched.add(pq_stats(preds, gts))
    assert batched.results(CATEGORIES) == pytest.approx(one.results(CATEGORIES), abs=1e-12)


def test_group_without_counted_categories_is_zero():
    gt = pan([(1, 40)], {1: 3})
    totals = PQTotals()
    totals.add(pq_stats([gt], [gt]))
    got = totals.results(CATEGORIES)
    assert got["pq_stuff"] == 1.0 and got["pq"] == 1.0 and got["pq_things"] == 0.0


def test_metric_uses_the_full_resolution_ground_truth():
    full = np.kron(np.array([[1, 2], [1, 1]], np.int32), np.ones((3, 3), np.int32))  # 6x6
    segs = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 27},
            {"id": 2, "category_id": 3, "iscrowd": 0, "area": 9}]
    target = {"map": None, "segments": None, "full_map": full, "full_segments": segs}
    pred = {"map": np.array([[5, 6], [5, 5]], np.int32),
            "segments": [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 3}]}
    assert panoptic_metrics([pred], [target], CATEGORIES)["pq"] == 1.0


# ---- a plain loop over segment pairs, transcribing panopticapi's pq_compute_single_core -------------

def reference_stats(pred, gt):
    """{category: [tp, fp, fn, iou]} by dictionaries and loops, rule by rule."""
    pred_map, gt_map = pred["map"].ravel(), gt["map"].ravel()
    gt_segs = {s["id"]: s for s in gt["segments"]}
    pred_segs = {s["id"]: dict(s) for s in pred["segments"]}
    for sid in pred_segs:
        pred_segs[sid]["area"] = int((pred_map == sid).sum())
    pairs = {}
    for g, p in zip(gt_map.tolist(), pred_map.tolist()):
        pairs[(g, p)] = pairs.get((g, p), 0) + 1
    stats = {}

    def cat(c):
        return stats.setdefault(c, [0, 0, 0, 0.0])
    gt_matched, pred_matched = set(), set()
    for (g, p), inter in pairs.items():
        if g not in gt_segs or p not in pred_segs or gt_segs[g].get("iscrowd", 0) == 1:
            continue
        if gt_segs[g]["category_id"] != pred_segs[p]["category_id"]:
            continue
        union = pred_segs[p]["area"] + gt_segs[g]["area"] - inter - pairs.get((0, p), 0)
        if inter / union > 0.5:
            cat(gt_segs[g]["category_id"])[0] += 1
            cat(gt_segs[g]["category_id"])[3] += inter / union
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt_segs.items():
        if g in gt_matched:
            continue
        if info.get("iscrowd", 0) == 1:
            crowd[info["category_id"]] = g
            continue
        cat(info["category_id"])[2] += 1
    for p, info in pred_segs.items():
        if p in pred_matched:
            continue
        ignored = pairs.get((0, p), 0)
        if info["category_id"] in crowd:
            ignored += pairs.get((crowd[info["category_id"]], p), 0)
        if ignored / info["area"] > 0.5:
            continue
        cat(info["category_id"])[1] += 1
    return stats


def random_pair(rng):
    h, w = rng.integers(3, 9, size=2)
    n_gt = int(rng.integers(1, 6))
    gt_ids = rng.choice(np.arange(1, 40), n_gt, replace=False)
    gt_map = rng.choice(np.append(gt_ids, 0), size=(h, w))
    gt_segs = [{"id": int(i), "category_id": int(rng.integers(1, 4)), "iscrowd": int(rng.random() < 0.25),
                "area": int((gt_map == i).sum())} for i in gt_ids]
    pred_map = gt_map.copy()
    noise = rng.random((h, w)) < rng.uniform(0, 0.6)
    pred_map[noise] = rng.choice(np.arange(0, 50), size=int(noise.sum()))
    pred_ids = [int(i) for i in np.unique(pred_map) if i != 0]
    pred_segs = [{"id": i, "category_id": int(rng.integers(1, 4))} for i in pred_ids]
    return {"map": pred_map, "segments": pred_segs}, {"map": gt_map, "segments": gt_segs}


def test_matches_a_loop_transcription_of_panopticapi_on_random_maps():
    rng = np.random.default_rng(0)
    pairs = [random_pair(rng) for _ in range(300)]
    preds, gts = [p for p, _ in pairs], [g for _, g in pairs]
    s = pq_stats(preds, gts)  # one batch of 300 images of different sizes
    for n, (p, g) in enumerate(pairs):
        ref = reference_stats(p, g)
        got = {c: [s.tp[n, k], s.fp[n, k], s.fn[n, k], s.iou[n, k]] for k, c in enumerate(s.categories.tolist())
               if s.tp[n, k] + s.fp[n, k] + s.fn[n, k] > 0}
        ref = {c: v for c, v in ref.items() if v[0] + v[1] + v[2] > 0}
        assert got.keys() == ref.keys(), n
        for c in ref:
            assert got[c][:3] == ref[c][:3] and got[c][3] == pytest.approx(ref[c][3], abs=1e-12), (n, c)
