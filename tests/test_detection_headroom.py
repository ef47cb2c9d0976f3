"""Headroom before tuning (tasks/detection/headroom.py) on hand-made boxes and a tiny hand-made ground truth.

One 100 x 100 image, coordinates on an 11-bin grid (bin b = 0.1 * b, so boxes land exactly on the
ground truth). COCO AP is per class: a false positive ranked above the true positive of its class
halves that class's AP (precision 1/2 at every recall), below it costs nothing.
"""
from functools import partial

import numpy as np
import pytest
import torch

from rewardtune.tasks.detection import _metrics
from rewardtune.tasks.detection.codec import DetectionCodec
from rewardtune.tasks.detection.headroom import class_nms, headroom, hedge, pool_samples

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
A, B = (1, 1, 5, 5), (6, 6, 9, 9)  # bins (ymin, xmin, ymax, xmax)


def target(*boxes):
    """A target of the 100 x 100 image with ground truths (bins, class)."""
    coords = np.array([b for b, _ in boxes], np.float32).reshape(-1, 4) / 10
    anns = [{"id": i + 1, "image_id": 0, "category_id": CATEGORIES[c]["id"],
             "bbox": [float(x) for x in (b[1] * 10, b[0] * 10, (b[3] - b[1]) * 10, (b[2] - b[0]) * 10)]}
            for i, (b, c) in enumerate(boxes)]
    return {"boxes": coords, "classes": np.array([c for _, c in boxes], np.int64), "width": 100, "height": 100,
            "annotations": anns}


def greedy_sequence(codec, boxes):
    """(tokens, step log-probs) of boxes (bins, class, coordinate prob q, class distribution): each coordinate
    token has probability q, the class token the distribution's, conf "right" 0.9: token prob (q^4 p_c)^(1/5)."""
    tokens, rows = [], []
    for bins, cls, q, dist in boxes:
        for b in bins:
            row = torch.full((codec.vocab_size,), float(np.log(1e-6)))
            row[b] = float(np.log(q))
            tokens.append(b), rows.append(row)
        row = torch.full((codec.vocab_size,), float(np.log(1e-6)))
        row[codec.class_token:codec.class_token + codec.num_classes] = torch.log(torch.tensor(dist))
        tokens.append(codec.class_token + cls), rows.append(row)
        row = torch.full((codec.vocab_size,), float(np.log(1e-6)))
        row[codec.wrong_token], row[codec.right_token] = float(np.log(0.1)), float(np.log(0.9))
        tokens.append(codec.right_token), rows.append(row)
    row = torch.zeros(codec.vocab_size)
    tokens.append(codec.end_token), rows.append(row)
    return torch.tensor(tokens), torch.stack(rows)


def run(greedy_boxes, samples, truth):
    codec = DetectionCodec(3, bins=11, max_boxes=4, box_order="canonical", score="token_prob")
    greedy = [greedy_sequence(codec, greedy_boxes)]
    return headroom(greedy, [samples], [truth], [0], codec=codec, metrics=partial(_metrics, categories=CATEGORIES))


def sample(*boxes):
    """A decoded sample: boxes (bins, class, token prob)."""
    return {"boxes": np.array([b for b, _, _ in boxes], np.float32).reshape(-1, 4) / 10,
            "classes": np.array([c for _, c, _ in boxes], np.int64),
            "score_prob": np.array([p for _, _, p in boxes], np.float32)}


def test_oracle_ranking_puts_the_true_positive_above_the_likelier_false_positive():
    one = [1.0, 0.0, 0.0]
    # the true positive (IoU 1 with A) at token prob 0.5, a false positive of its class at 0.9
    out = run([(A, 0, 0.5, one), (B, 0, 0.9, one)], [], target((A, 0)))
    assert out["greedy_map_by_token_prob"] == pytest.approx(0.5)  # FP first: precision 1/2 at recall 1
    assert out["greedy_map_by_oracle_iou"] == pytest.approx(1.0)  # oracle IoU 1 vs 0: TP first
    assert out["greedy_map"] == out["greedy_map_by_token_prob"] and out["greedy_score"] == "token_prob"
    assert not any(k.startswith("pooled_") for k in out)  # no samples, no pool


def test_pooled_samples_union_with_class_wise_nms():
    a2 = (1, 1, 5, 6)  # IoU 0.8 with A: a repeat of A across samples
    c = (0, 6, 2, 9)  # a false positive of class 1, overlapping nothing
    samples = [sample((A, 0, 0.5)), sample((a2, 0, 0.4), (B, 1, 0.3)), sample((c, 1, 0.9))]
    union = pool_samples(samples[:2], nms_iou=None)
    assert union["classes"].tolist() == [0, 0, 1] and np.allclose(union["scores"], [0.5, 0.4, 0.3])
    pooled = pool_samples(samples[:2])  # a2 dropped: same class, IoU 0.8 > 0.7 with the likelier A
    assert pooled["classes"].tolist() == [0, 1] and np.allclose(pooled["scores"], [0.5, 0.3])
    np.testing.assert_allclose(pooled["boxes"], np.array([A, B], np.float32) / 10)
    assert class_nms(union["boxes"], np.array([0, 1, 1]), union["scores"], 0.7).tolist() == [0, 1, 2]  # other class
    out = run([(A, 0, 0.5, [1.0, 0.0, 0.0])], samples, target((A, 0), (B, 1)))
    # 1 sample: A found, B missed -> (1 + 0) / 2; all 3 (K): class 0 AP 1, class 1: the FP c (0.9) ranks above
    # B (0.3): AP 1/2 -> 0.75. Sizes 1, 4, 16 and K = 3: those <= K.
    assert out["pooled_map_1"] == pytest.approx(0.5) and out["pooled_ar100_1"] == pytest.approx(0.5)
    assert out["pooled_map_3"] == pytest.approx(0.75) and out["pooled_ar100_3"] == pytest.approx(1.0)
    assert {k for k in out if k.startswith("pooled_map")} == {"pooled_map_1", "pooled_map_3"}


def test_hedging_adds_each_box_again_with_its_second_class_at_its_probability():
    codec = DetectionCodec(3, bins=11, max_boxes=4, box_order="canonical", score="token_prob")
    # box 1 at A, emitted as class 2 though class 0 is its second; box 2 at B, class 1 right, second class 2
    boxes = [(A, 2, 0.5, [0.35, 0.05, 0.6]), (B, 1, 0.8, [0.1, 0.7, 0.2])]
    tokens, lp = greedy_sequence(codec, boxes)
    out = hedge(codec.decode(tokens, lp), lp, codec.class_token, codec.num_classes)
    assert out["classes"].tolist() == [2, 1, 0, 2]
    np.testing.assert_allclose(out["boxes"], np.array([A, B, A, B], np.float32) / 10)
    expected = [(0.5 ** 4 * 0.6) ** 0.2, (0.8 ** 4 * 0.7) ** 0.2, (0.5 ** 4 * 0.35) ** 0.2, (0.8 ** 4 * 0.2) ** 0.2]
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-5)
    result = run(boxes, [], target((A, 0), (B, 1)))
    # greedy: class 0 missed (A came out as class 2, which has no ground truth), class 1 found -> 0.5;
    # hedged: A's copy as class 0 finds it -> 1.0 (B's copy as class 2 has no ground truth to hurt)
    assert result["greedy_map_by_token_prob"] == pytest.approx(0.5)
    assert result["hedged_map"] == pytest.approx(1.0)


def test_hedging_with_one_class_changes_nothing():
    codec = DetectionCodec(1, bins=11, max_boxes=4, box_order="canonical", score="token_prob")
    tokens, lp = greedy_sequence(codec, [(A, 0, 0.5, [1.0])])
    decoded = codec.decode(tokens, lp)
    out = hedge(decoded, lp, codec.class_token, codec.num_classes)
    assert out["classes"].tolist() == [0] and np.allclose(out["scores"], decoded["score_prob"])
