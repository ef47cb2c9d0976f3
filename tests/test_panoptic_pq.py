"""Per-image PQ (the panoptic reward) on hand-computed maps: one test per panopticapi rule."""
import numpy as np
import pytest
import torch

from rewardtune.tasks.base import REGION_PART
from rewardtune.tasks.panoptic.pq import (average_pq, dataset_pq_shares, pq_batch, pq_dataset_reward, pq_image, pq_reward,
                                          pq_stats)


def strip(*runs):
    """A 1 x L map from runs of (segment id, length)."""
    return np.concatenate([np.full(n, i, np.int32) for i, n in runs])[None, :]


def pan(runs, segments):
    """segments: {id: category} or {id: (category, iscrowd)}."""
    segs = []
    for sid, v in segments.items():
        cat, crowd = v if isinstance(v, tuple) else (v, 0)
        segs.append({"id": sid, "category_id": cat, "iscrowd": crowd})
    return {"map": strip(*runs), "segments": segs}


# gt of most tests: a thing (category 1) on pixels 0..19 and stuff (category 2) on 20..39
GT = pan([(1, 20), (2, 20)], {1: 1, 2: 2})


def test_perfect_match_scores_one():
    pred = pan([(5, 20), (6, 20)], {5: 1, 6: 2})  # other ids, same partition and categories
    assert pq_image(pred, GT) == (1.0, 1.0, 1.0)


def test_iou_just_above_half_matches():
    pred = pan([(7, 11), (8, 29)], {7: 1, 8: 2})
    pq, sq, rq = pq_image(pred, GT)
    thing, stuff = 11 / 20, 20 / 29
    assert pq == pytest.approx((thing + stuff) / 2)
    assert sq == pytest.approx((thing + stuff) / 2)
    assert rq == 1.0


def test_iou_of_exactly_half_does_not_match():
    pred = pan([(7, 10), (8, 30)], {7: 1, 8: 2})  # thing IoU 10/20 = 0.5: one FP and one FN
    s = pq_stats([pred], [GT])
    row = dict(zip(s.categories.tolist(), zip(s.tp[0], s.fp[0], s.fn[0])))
    assert row == {1: (0, 1, 1), 2: (1, 0, 0)}
    pq, sq, rq = pq_image(pred, GT)
    assert pq == pytest.approx((0 + 20 / 30) / 2)
    assert sq == pytest.approx((0 + 20 / 30) / 2)  # sq of a category without TP counts as 0
    assert rq == pytest.approx(0.5)


def test_void_pixels_are_removed_from_the_union():
    gt = pan([(0, 10), (1, 20), (2, 10)], {1: 1, 2: 2})  # 10 VOID pixels first
    # pred 7 covers the void + 12 of the 20 thing pixels: plain IoU 12/30 = 0.4, panopticapi's 12/20
    pred = pan([(7, 22), (8, 18)], {7: 1, 8: 2})
    s = pq_stats([pred], [gt])
    assert s.tp[0].tolist() == [1, 1] and s.fp[0].sum() == 0 and s.fn[0].sum() == 0
    assert s.iou[0].tolist() == pytest.approx([12 / 20, 10 / 18])
    assert pq_image(pred, gt)[0] == pytest.approx((0.6 + 10 / 18) / 2)


def test_prediction_mostly_on_void_is_not_a_false_positive():
    gt = pan([(0, 10), (2, 30)], {2: 2})
    pred = pan([(7, 8), (8, 32)], {7: 1, 8: 2})  # 7: all on void -> ignored; 8's 2 void px leave its union
    assert pq_image(pred, gt) == (1.0, 1.0, 1.0)
    pred = pan([(0, 4), (7, 10), (8, 26)], {7: 1, 8: 2})  # 7: 6 of 10 px on void -> ignored
    assert pq_stats([pred], [gt]).fp.sum() == 0
    pred = pan([(0, 5), (7, 10), (8, 25)], {7: 1, 8: 2})  # 7: 5 of 10 px on void (not > 0.5) -> FP
    assert pq_stats([pred], [gt]).fp.sum() == 1


def test_crowd_region_absorbs_a_prediction_of_its_category():
    gt = pan([(1, 20), (2, 20)], {1: (1, 1), 2: 2})  # the thing is a crowd region
    pred = pan([(0, 4), (7, 16), (8, 20)], {7: 1, 8: 2})
    s = pq_stats([pred], [gt])
    assert s.fp.sum() == 0 and s.fn.sum() == 0  # no FP for 7, no FN for the crowd
    assert s.categories.tolist() == [1, 2] and s.tp[0].tolist() == [0, 1]
    assert pq_image(pred, gt) == (1.0, 1.0, 1.0)  # category 1 has no tp/fp/fn: not averaged


def test_crowd_region_of_another_category_does_not_absorb():
    gt = pan([(1, 20), (2, 20)], {1: (1, 1), 2: 2})
    pred = pan([(7, 20), (8, 20)], {7: 3, 8: 2})  # category 3 on category 1's crowd -> FP
    s = pq_stats([pred], [gt])
    assert dict(zip(s.categories.tolist(), s.fp[0].tolist())) == {1: 0, 2: 0, 3: 1}
    assert pq_image(pred, gt)[0] == pytest.approx(0.5)


def test_void_and_crowd_shares_add_up():
    gt = pan([(0, 3), (1, 3), (2, 34)], {1: (1, 1), 2: 2})
    pred = pan([(7, 10), (8, 30)], {7: 1, 8: 2})  # 3 void + 3 crowd = 6 of 10 px -> ignored
    assert pq_stats([pred], [gt]).fp.sum() == 0


def test_only_the_last_crowd_segment_of_a_category_counts():
    gt = pan([(1, 10), (3, 10), (2, 20)], {1: (1, 1), 3: (1, 1), 2: 2})  # two crowds of category 1
    on_first = pan([(7, 10), (8, 30)], {7: 1, 8: 2})
    on_last = pan([(8, 10), (7, 10), (8, 20)], {7: 1, 8: 2})
    assert pq_stats([on_first], [gt]).fp.sum() == 1  # panopticapi keeps the last crowd id per category
    assert pq_stats([on_last], [gt]).fp.sum() == 0


def test_empty_prediction_is_all_false_negatives():
    pred = {"map": np.zeros((1, 40), np.int32), "segments": []}
    s = pq_stats([pred], [GT])
    assert s.fn[0].tolist() == [1, 1] and s.tp.sum() == 0 and s.fp.sum() == 0
    assert pq_image(pred, GT) == (0.0, 0.0, 0.0)


def test_category_missing_from_one_side_counts_in_the_average():
    pred = pan([(7, 20), (8, 20)], {7: 3, 8: 2})  # category 1 missing from pred, 3 missing from gt
    s = pq_stats([pred], [GT])
    table = dict(zip(s.categories.tolist(), zip(s.tp[0], s.fp[0], s.fn[0])))
    assert table == {1: (0, 0, 1), 2: (1, 0, 0), 3: (0, 1, 0)}
    assert pq_image(pred, GT) == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_gt_area_comes_from_segments_info_when_given():
    gt = pan([(1, 20), (2, 20)], {1: 1, 2: 2})
    gt["segments"][0]["area"] = 22  # panopticapi reads gt areas from the JSON
    pred = pan([(7, 20), (8, 20)], {7: 1, 8: 2})
    assert pq_stats([pred], [gt]).iou[0].tolist() == pytest.approx([20 / 22, 1.0])


def test_nothing_to_find_and_nothing_predicted_scores_one():
    empty = {"map": np.zeros((2, 2), np.int32), "segments": []}
    assert pq_image(empty, empty) == (1.0, 1.0, 1.0)


def test_prediction_is_resized_to_the_ground_truth():
    gt = {"map": np.kron(np.array([[1, 2]]), np.ones((4, 4), np.int32)),
          "segments": [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]}
    pred = {"map": np.array([[5, 6]]), "segments": [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 2}]}
    assert pq_image(pred, gt) == (1.0, 1.0, 1.0)


def test_batch_equals_one_by_one_and_reward_is_a_tensor():
    preds = [pan([(7, 11), (8, 29)], {7: 1, 8: 2}), pan([(7, 10), (8, 30)], {7: 1, 8: 2}),
             {"map": np.zeros((1, 40), np.int32), "segments": []}, GT]
    gts = [GT, GT, GT, pan([(0, 10), (1, 20), (2, 10)], {1: 1, 2: 2})]
    pq, sq, rq = pq_batch(preds, gts)
    for i in range(len(preds)):
        assert (pq[i], sq[i], rq[i]) == pytest.approx(pq_image(preds[i], gts[i]))
    reward, parts = pq_reward(preds, gts)
    assert reward.dtype == torch.float32 and reward.shape == (4,)
    assert torch.allclose(reward, torch.tensor(pq, dtype=torch.float32))
    assert set(parts) == {"sq", "rq", REGION_PART} and parts["rq"].shape == (4,)
    assert torch.allclose(parts[REGION_PART].sum((1, 2)), reward, atol=1e-5)  # where the PQ was earned


def dataset_pq(preds, gts):
    """pq_compute's PQ of a batch: the counts pooled over its images, then averaged over categories."""
    st = pq_stats(preds, gts)
    return float(average_pq(st.tp.sum(0), st.fp.sum(0), st.fn.sum(0), st.iou.sum(0), empty=1.0)[0])


def test_dataset_share_on_a_hand_case():
    perfect = pan([(5, 20), (6, 20)], {5: 1, 6: 2})
    merged = pan([(8, 40)], {8: 2})  # IoU 0.5 with the stuff: no match; the thing missed, the merge a false positive
    share, regions = dataset_pq_shares([perfect, merged], [GT, GT], regions=2)
    # pooled: thing S 1, D 1 + 0.5 (PQ 2/3); stuff S 1, D 1 + 0.5 + 0.5 (PQ 1/2); batch PQ 7/12;
    # weights N / (C D_c): 2/3 and 1/2
    assert dataset_pq([perfect, merged], [GT, GT]) == pytest.approx(7 / 12)
    assert share == pytest.approx([7 / 12 + 2 / 3 * (1 - 2 / 3) + 1 / 2 * (1 - 1 / 2),
                                   7 / 12 - 2 / 3 * (2 / 3) / 2 - 1 / 2 * (1 / 2) / 2 - 1 / 2 * (1 / 2) / 2])
    assert share.mean() == pytest.approx(7 / 12)
    # the merge: the batch's PQ spread evenly, the missed thing on its pixels (left), the missed stuff on its
    # own (right), the false positive over its whole extent
    assert regions[1] == pytest.approx(np.array([[7 / 24 - 2 / 9 - 1 / 16, 7 / 24 - 1 / 8 - 1 / 16], [0, 0]]))
    reward, parts = pq_dataset_reward([perfect, merged], [GT, GT])
    assert reward.dtype == torch.float32 and torch.allclose(reward, torch.tensor(share, dtype=torch.float32))
    assert parts["pq"].tolist() == [1.0, 0.0]  # the per-image PQ beside it
    assert torch.allclose(parts[REGION_PART].sum((1, 2)), reward, atol=1e-6)


def random_pair(rng):
    h, w = rng.integers(6, 16, size=2)
    gt_ids = np.full((h, w), 9)
    gt_ids[: h // 2] = 4
    for sid in (1, 2):  # two things of random extent
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        gt_ids[y:y + 3, x:x + 3] = sid
    gt = {"map": gt_ids, "segments": [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 5},
                                      {"id": 4, "category_id": 3}, {"id": 9, "category_id": 2}]}
    pred_ids = np.where(rng.random((h, w)) < 0.85, gt_ids, rng.choice([1, 4, 9, 7]))
    cats = {1: 1, 2: int(rng.choice([5, 1])), 4: 3, 9: 2, 7: 1}
    pred = {"map": pred_ids, "segments": [{"id": k, "category_id": v} for k, v in cats.items()]}
    return pred, gt


def test_dataset_shares_average_to_the_batch_pq_and_their_regions_sum_to_them():
    rng = np.random.default_rng(1)
    preds, gts = zip(*[random_pair(rng) for _ in range(24)])
    share, regions = dataset_pq_shares(preds, gts, regions=4)
    assert share.mean() == pytest.approx(dataset_pq(preds, gts))
    assert regions.sum((1, 2)) == pytest.approx(share)
    assert np.corrcoef(share, pq_batch(preds, gts)[0])[0, 1] > 0.5  # the same direction as per-image PQ, not the same
    assert dataset_pq_shares([], [], regions=4)[0].shape == (0,)
    empty = {"map": np.zeros((3, 3), np.int32), "segments": []}
    assert dataset_pq_shares([empty], [empty], regions=2)[0] == pytest.approx([1.0])  # nothing counts: 1, as pq_batch


def test_a_share_is_the_first_order_change_of_the_batch_pq():
    rng = np.random.default_rng(2)
    preds, gts = map(list, zip(*[random_pair(rng) for _ in range(120)]))
    for j in (0, 7, 31):
        better = {"map": gts[j]["map"].copy(), "segments": gts[j]["segments"]}  # the truth itself
        batch, with_better = preds + [better], preds[:j] + [better] + preds[j + 1:] + [better]
        share, _ = dataset_pq_shares(batch, gts + [gts[j]], regions=2)
        predicted = (share[-1] - share[j]) / len(batch)
        actual = dataset_pq(with_better, gts + [gts[j]]) - dataset_pq(batch, gts + [gts[j]])
        assert predicted > 0 and actual == pytest.approx(predicted, rel=0.1)
