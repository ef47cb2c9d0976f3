"""Detection rewards, against hand-computed values and a plain-loop reference; the IoU-confidence loss."""
import numpy as np
import pytest
import torch

from rewardtune.losses import mle_loss
from rewardtune.tasks.detection.aux import iou_confidence_loss, self_iou_mle_loss
from rewardtune.tasks.detection.codec import DetectionCodec
from rewardtune.tasks.detection.rewards import (class_weights, detection_stats, iou_conf_targets,
                                                map_reward, recall_reward)

W = np.array([0.5, 1.5])  # class weights used by the hand-computed cases
FULL = [0.0, 0.0, 1.0, 1.0]


def det(boxes, classes):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "classes": np.asarray(classes, np.int64)}


def reward(pred, gt, weights=W):
    r, parts = map_reward([pred], [gt], weights)
    return float(r[0]), {k: float(v[0]) for k, v in parts.items() if v.dim() == 1}


def test_class_weights_mean_one_and_rare_classes_worth_more():
    w = class_weights([100, 10])
    raw = 1 / np.array([100 + 0.05 * 110, 10 + 0.05 * 110])
    np.testing.assert_allclose(w, raw * 2 / raw.sum())
    assert w.mean() == pytest.approx(1.0) and w[1] > w[0]
    assert class_weights([0, 0, 0]).tolist() == [1.0, 1.0, 1.0]
    common, rare = det([FULL], [0]), det([FULL], [1])
    assert reward(rare, rare, w)[0] > reward(common, common, w)[0]


def test_perfect_empty_and_wrong_class():
    gt = det([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [0, 1])
    assert reward(gt, gt)[0] == pytest.approx(0.5 + 1.5)  # not normalised by the number of gt
    assert reward(det([], []), gt)[0] == 0.0
    assert reward(gt, det([], []))[0] == 0.0  # no ground truth: nothing to match, nothing duplicated
    r, parts = reward(det([[0, 0, 0.5, 0.5]], [1]), gt)
    assert r == 0.0 and parts["duplicates"] == 0.0  # a wrong class neither matches nor duplicates


def test_duplicate_costs_point_three_of_its_weight():
    gt = det([FULL], [1])
    r, parts = reward(det([FULL, FULL], [1, 1]), gt)
    assert r == pytest.approx(1.5 - 0.3 * 1.5)
    assert parts["duplicates"] == 1.0 and parts["num_boxes"] == 2.0
    r2, _ = map_reward([det([FULL, FULL], [1, 1])], [gt], W, dup_penalty=1.0)
    assert float(r2[0]) == pytest.approx(0.0)


def test_iou_exactly_at_a_threshold_does_not_match():
    gt = det([FULL], [0])
    assert reward(det([[0, 0, 0.75, 1]], [0]), gt)[0] == pytest.approx(0.5 * 5 / 10)  # t = 0.50..0.70
    assert reward(det([[0, 0, 0.5, 1]], [0]), gt)[0] == 0.0  # IoU 0.5 is not > 0.5


def test_each_ground_truth_takes_its_best_unclaimed_prediction():
    gt = det([FULL, FULL], [0, 0])
    r, parts = reward(det([FULL], [0]), gt)
    assert r == pytest.approx(0.5) and parts["matches"] == 1.0 and parts["duplicates"] == 0.0
    # gt 0 takes the exact box; the looser one is then free for gt 1 at the low thresholds.
    r, parts = reward(det([[0, 0, 0.625, 1], FULL], [0, 0]), gt)
    assert r == pytest.approx(0.5 + 0.5 * 3 / 10)  # IoU 0.625 > t for t = 0.50, 0.55, 0.60
    # The highest IoU, not the first candidate: gt 0 takes the exact box p1 (IoU 1; p0 has 0.64),
    # leaving p0 to gt 1 (IoU 0.879 > t up to 0.85). Taking p0 first would leave gt 1 only p1
    # (IoU 0.5625): a miss and a duplicate at t = 0.60.
    gt = det([FULL, [0, 0, 0.75, 0.75]], [0, 0])
    r, parts = reward(det([[0, 0, 0.8, 0.8], FULL], [0, 0]), gt)
    assert r == pytest.approx(0.5 * (10 + 8) / 10) and parts["duplicates"] == 0.0


def reference_reward(pred, gt, w, dup=0.3):
    """The paper's rule (docs/method.md#detection) with plain loops."""
    def iou(a, b):
        ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ih * iw
        return ih * iw / union if union > 0 else 0.0
    total = 0.0
    for t in [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]:
        claimed, r = set(), 0.0
        for g, gc in zip(gt["boxes"], gt["classes"]):
            cands = [(iou(p, g), -i) for i, (p, pc) in enumerate(zip(pred["boxes"], pred["classes"]))
                     if pc == gc and i not in claimed and iou(p, g) > t]
            if cands:
                claimed.add(-max(cands)[1])
                r += w[gc]
        for i, (p, pc) in enumerate(zip(pred["boxes"], pred["classes"])):
            if i not in claimed and any(pc == gc and iou(p, g) > t for g, gc in zip(gt["boxes"], gt["classes"])):
                r -= dup * w[pc]
        total += r
    return total / 10


def test_batched_reward_equals_reference_loops():
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 9)  # coarse coordinates: many exact ties and overlaps

    def ordered(b):
        """[m, 4] -> each (ymin, ymax) and (xmin, xmax) pair put in order."""
        return np.sort(b.reshape(-1, 2, 2), axis=1).reshape(-1, 4)

    def prediction(gt):
        """Copies of the ground truths, half shifted by a grid step, plus random boxes; shuffled."""
        m = len(gt["classes"])
        shift = rng.choice([-0.125, 0, 0.125], size=(m, 4)) * (rng.random((m, 1)) < 0.5)
        extra = rng.integers(0, 3)
        b = np.concatenate([ordered(np.clip(gt["boxes"] + shift, 0, 1)), ordered(rng.choice(grid, (extra, 4)))])
        c = np.concatenate([gt["classes"], rng.integers(0, 2, extra)])
        keep = rng.permutation(len(c))[: rng.integers(0, len(c) + 1)]
        return det(b[keep], c[keep])
    gts = [det(ordered(rng.choice(grid, (m, 4))), rng.integers(0, 2, m)) for m in rng.integers(0, 6, 80)]
    preds = [prediction(g) for g in gts]
    r, parts = map_reward(preds, gts, W)
    expected = [reference_reward(p, g, W) for p, g in zip(preds, gts)]
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts["per_item"].sum(1).numpy(), expected, rtol=1e-5, atol=1e-6)  # boxes' shares
    assert len(set(np.round(expected, 4))) > 5  # the cases are not all alike


def test_recall_reward():
    gt = det([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [0, 1])
    half = det([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]], [0, 0])
    r, parts = recall_reward([gt, half, det([[0, 0, 0.25, 0.5]], [0]), det([], []), det([FULL], [0])],
                             [gt, gt, gt, det([], []), det([], [])])
    assert r.tolist() == pytest.approx([1.0, 0.5, 0.5, 1.0, 0.0])  # IoU 0.5 counts (>= 0.5)
    assert parts["num_boxes"].tolist() == [2, 2, 1, 0, 1]


def test_iou_conf_targets_and_stats():
    gt = det([FULL], [0])
    preds = det([[0, 0, 0.8, 1], [0, 0, 0.8, 1], [0, 0, 0.4, 1]], [0, 0, 0])
    np.testing.assert_allclose(iou_conf_targets([preds], [gt])[0], [0.8, 0.0, 0.0], rtol=1e-6)
    stats = detection_stats([preds, det([], [])], [gt, gt])
    assert stats == pytest.approx({"boxes_per_image": 1.5, "duplicates_per_image": 0.5,
                                   "precision50": 1 / 3, "recall50": 0.5})


def conf_loss_setup(favour):
    codec = DetectionCodec(2, bins=16)
    gt = det([FULL], [0])
    tokens = codec.encode(gt)[None]  # (1, 7)
    logits = torch.zeros(1, tokens.shape[1], codec.vocab_size)
    logits[0, 5, favour(codec)] = 5.0
    logits.requires_grad_(True)
    out = codec.decode(tokens[0])
    loss = iou_confidence_loss(torch.log_softmax(logits, -1), tokens, [out], [gt], codec.no_object_token)
    return loss, logits


def test_iou_confidence_loss_gradient_and_target():
    right, grad_logits = conf_loss_setup(lambda c: c.right_token)  # the box has IoU 1: target (0, 0, 1)
    wrong, _ = conf_loss_setup(lambda c: c.wrong_token)
    assert right.item() < wrong.item()
    right.backward()
    grad = grad_logits.grad[0]
    assert grad[5].abs().sum() > 0 and grad[torch.arange(7) != 5].abs().sum() == 0


def test_iou_confidence_loss_without_boxes_and_with_masked_tokens():
    codec = DetectionCodec(2, bins=16)
    logits = torch.randn(2, 7, codec.vocab_size, requires_grad=True)
    empty = codec.decode([codec.end_token])
    loss = iou_confidence_loss(torch.log_softmax(logits, -1), torch.zeros(2, 7, dtype=torch.long),
                               [empty, empty], [det([], []), det([FULL], [0])], codec.no_object_token)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
    gt = det([FULL], [0])
    tokens = codec.encode(gt)[None]
    masked = torch.zeros(1, 7, codec.vocab_size)
    masked[0, 5, codec.no_object_token] = -float("inf")  # grammar-masked; its target is 0
    masked.requires_grad_(True)
    loss = iou_confidence_loss(torch.log_softmax(masked, -1), tokens, [codec.decode(tokens[0])], [gt],
                               codec.no_object_token)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(masked.grad).all()


def test_self_iou_mle_loss_targets_the_models_own_box_iou():
    """Box [0, 0, 8, 8] of class 0 (bins of 16). Where the model's argmax box is the truth, the loss is the
    plain NLL; where its ymax guess is 4 (IoU 0.5) the conf target is (0, 0.5, 0.5); a wrong class: (0, 1, 0)."""
    codec = DetectionCodec(2, bins=16)
    tokens = torch.tensor([[0, 0, 8, 8, 16, codec.right_token, codec.end_token]])
    lengths = torch.tensor([7])

    def loss_with(ymax_guess, class_guess):
        logits = torch.zeros(1, 7, codec.vocab_size)
        for t, tok in enumerate([0, 0, ymax_guess, 8, class_guess]):
            logits[0, t, tok] = 5.0
        logits[0, 5, codec.wrong_token], logits[0, 5, codec.right_token] = 1.0, 2.0
        logits.requires_grad_(True)
        lp = torch.log_softmax(logits, -1)
        return lp, logits, self_iou_mle_loss(lp, tokens, lengths, codec)

    lp, logits, exact = loss_with(8, 16)
    assert exact.item() == pytest.approx(mle_loss(lp, tokens, lengths).item(), rel=1e-6)
    lp, logits, half = loss_with(4, 16)
    conf = lp[0, 5]
    other = -(lp[0, [0, 1, 2, 3, 4, 6], [0, 0, 8, 8, 16, codec.end_token]]).sum()
    expected = (other - 0.5 * conf[codec.wrong_token] - 0.5 * conf[codec.right_token]) / 7
    assert half.item() == pytest.approx(expected.item(), rel=1e-6)
    half.backward()
    assert logits.grad[0, 5, codec.wrong_token] < 0  # "wrong" is pushed up at the conf position
    lp, _, wrong_class = loss_with(8, 17)
    expected = (-(lp[0, [0, 1, 2, 3, 4, 6], [0, 0, 8, 8, 16, codec.end_token]]).sum() - lp[0, 5, codec.wrong_token]) / 7
    assert wrong_class.item() == pytest.approx(expected.item(), rel=1e-6)
