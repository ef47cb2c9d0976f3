"""The learned box score: its features, targets, fit, rank diagnostics, and that a run's saved head is
the score `eval` writes and `score` reads back."""
import json
import math
import os

import numpy as np
import pytest
import torch

from rewardtune import checkpoint
from rewardtune.cli import main
from rewardtune.config import apply_overrides, from_dict
from rewardtune.data.shapes import generate_shapes
from rewardtune.recipes import recipe_dict
from rewardtune.tasks.detection import DetectionCodec, _metrics
from rewardtune.tasks.detection.rewards import iou_conf_targets
from rewardtune.tasks.detection.score_head import FEATURES, apply_head, box_features, fit_head, spearman
from rewardtune.tasks.detection.verifier import CROP, VerifierNet
from rewardtune.train import train

CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def target(boxes, classes, image_id=1):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    anns = [{"id": 100 * image_id + i, "image_id": image_id, "category_id": CATS[c]["id"], "iscrowd": 0,
             "bbox": [float(b[1] * 100), float(b[0] * 100), float((b[3] - b[1]) * 100), float((b[2] - b[0]) * 100)],
             "area": float((b[3] - b[1]) * (b[2] - b[0]) * 1e4)} for i, (b, c) in enumerate(zip(boxes, classes))]
    return {"boxes": boxes, "classes": np.asarray(classes, np.int64), "width": 100, "height": 100, "annotations": anns}


def output(boxes, classes, prob, iou=None):
    prob = np.asarray(prob, np.float32)
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "classes": np.asarray(classes, np.int64),
            "scores": prob, "score_prob": prob, "score_iou": prob if iou is None else np.asarray(iou, np.float32)}


def test_targets_are_iou_with_the_matched_truth_and_zero_for_false_positives_and_duplicates():
    truth = target([[0.1, 0.1, 0.5, 0.5]], [0])
    out = output([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.44], [0.6, 0.6, 0.9, 0.9],
                  [0.1, 0.1, 0.5, 0.5]], [0, 0, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5])
    # box 0 matches (IoU 1); box 1 duplicates it; box 2 would match (IoU 0.85) but the truth is taken;
    # box 3 lies elsewhere; box 4 has the wrong class
    np.testing.assert_allclose(iou_conf_targets([out], [truth])[0], [1, 0, 0, 0, 0])
    alone = output([[0.1, 0.1, 0.5, 0.44]], [0], [0.7])
    np.testing.assert_allclose(iou_conf_targets([alone], [truth])[0], [0.85], atol=1e-6)


def test_spearman_on_hand_made_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    # ties share their average rank: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> Pearson of the ranks
    assert spearman([0, 0, 1], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_rank_metrics_and_oracle_on_a_hand_made_case():
    """Two images; token probability ranks the false positive first, the learned score last: mAP by each
    score, the oracle, and the Spearman of each score with the oracle IoU are what COCOeval gives."""
    truths = [target([[0.1, 0.1, 0.5, 0.5]], [0], 1), target([[0.2, 0.2, 0.6, 0.6]], [0], 2)]
    outs = [output([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], [0, 0], [0.5, 0.9], iou=[0.5, 0.9]),
            output([[0.2, 0.2, 0.6, 0.6]], [0], [0.4], iou=[0.4])]
    for o, learned in zip(outs, ([0.8, 0.1], [0.7])):
        o["score_learned"] = np.asarray(learned, np.float32)
    m = _metrics(outs, truths, [1, 2], CATS)
    # by token probability: FP first, then the two hits -> precision 0, 1/2, 2/3 at recalls 0, .5, 1
    # -> COCO 101-point interpolated AP = (51 * 2/3 + 50 * 2/3) / 101 = 2/3 at every IoU threshold
    assert m["map_by_token_prob"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["map_by_learned"] == pytest.approx(1.0) and m["map_by_oracle_iou"] == pytest.approx(1.0)
    assert m["spearman_learned"] == pytest.approx(spearman([0.8, 0.1, 0.7], [1, 0, 1]))
    assert m["spearman_token_prob"] == pytest.approx(spearman([0.5, 0.9, 0.4], [1, 0, 1]))
    assert m["spearman_learned"] > 0.8 > 0 > m["spearman_token_prob"]


def test_box_features_read_the_distributions_of_each_box():
    codec = DetectionCodec(2, bins=8, max_boxes=3, box_order="canonical")
    tokens = codec.encode({"boxes": np.array([[0.0, 0.0, 4 / 7, 4 / 7]]), "classes": np.array([1])})
    T, V = len(tokens), codec.vocab_size
    lp = torch.full((T, V), -1e9)
    for t in range(T):
        lp[t, tokens[t]] = 0.0  # certain of every token...
    lp[0, :] = -1e9
    lp[0, 0], lp[0, codec.end_token] = math.log(0.75), math.log(0.25)  # ...but ymin: 1/4 wanted to end instead
    lp[1, :codec.bins] = -math.log(codec.bins)  # xmin uniform over the 8 bins
    cls = codec.class_token
    lp[4, cls], lp[4, cls + 1] = math.log(0.4), math.log(0.6)
    f = dict(zip(FEATURES, box_features(codec, tokens[:6].numpy()[None], np.array([0]), lp)[0]))
    assert f["logp_end_instead"] == pytest.approx(math.log(0.25), abs=1e-5)
    assert f["logp_ymin"] == pytest.approx(math.log(0.75), abs=1e-5)
    assert f["spread_ymin"] == pytest.approx(0.0, abs=1e-6) and f["spread_ymax"] == pytest.approx(0.0, abs=1e-6)
    uniform_std = math.sqrt((8 ** 2 - 1) / 12)  # std of a uniform over 8 bins, over a side of 5 bins
    assert f["spread_xmin"] == pytest.approx(uniform_std / 5, abs=1e-5)
    assert f["entropy_xmin"] == pytest.approx(math.log(8), abs=1e-5)
    assert f["class_margin"] == pytest.approx(math.log(0.6) - math.log(0.4), abs=1e-5)
    assert f["logp_class"] == pytest.approx(math.log(0.6), abs=1e-5)
    assert f["height"] == pytest.approx(5 / 8) and f["count"] == pytest.approx(1 / 3)
    assert f["overlap_earlier"] == 0 and f["overlap_earlier_same_class"] == 0


def test_overlap_features_flag_duplicates_of_earlier_boxes():
    codec = DetectionCodec(2, bins=8, max_boxes=3, box_order="random")
    # box 1 repeats box 0 (same class), box 2 covers the left half of box 0 with the other class
    groups = np.array([[0, 0, 4, 4, cls := codec.class_token, codec.right_token],
                       [0, 0, 4, 4, cls, codec.right_token],
                       [0, 0, 4, 2, cls + 1, codec.right_token]])
    tokens = np.concatenate([groups.reshape(-1), [codec.end_token]])
    lp = torch.log_softmax(torch.zeros(len(tokens), codec.vocab_size), -1)
    f = box_features(codec, groups, np.array([0, 6, 12]), lp)
    col = {name: f[:, i] for i, name in enumerate(FEATURES)}
    np.testing.assert_allclose(col["overlap_earlier"], [0, 1, 0.5], atol=1e-6)
    np.testing.assert_allclose(col["overlap_earlier_same_class"], [0, 1, 0], atol=1e-6)


def test_fit_head_learns_a_monotone_score_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = 1 / (1 + np.exp(-3 * x[:, 2]))  # only feature 2 matters
    head = fit_head(x, y, seed=3)
    assert head == fit_head(x, y, seed=3)
    assert spearman(apply_head(head, x), y) > 0.95
    json.dumps(head)  # lives in the task state, saved as JSON with every checkpoint


TINY = ["data.image_size=32", "model.width=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2",
        "train.batch_size=8", "train.eval_every=3", "train.checkpoint_every=3", "train.log_every=1",
        "train.warmup_steps=1", "train.eval_images=8", "train.threads=0", "train.steps=3", "train.lr=3e-3",
        'task_options={"bins": 32, "max_boxes": 6, "score": "learned", "calibrate_images": 16, "calibrate_samples": 2}']


@pytest.mark.parametrize("score, state_key", [("learned", "score_head"), ("verifier", "verifier")])
def test_a_run_saves_its_fitted_score_and_eval_and_score_use_it(tmp_path, capsys, score, state_key):
    root = str(tmp_path / "data")
    generate_shapes(root, num_train=16, num_val=8, num_test=2, image_size=32, seed=2, level="faint")
    run = str(tmp_path / "run")
    tiny = [o.replace('"score": "learned"', f'"score": "{score}"') for o in TINY]
    cfg = from_dict(apply_overrides(recipe_dict("detection_demo_mle"), [f"data.root={json.dumps(root)}", *tiny]))
    metrics = train(cfg, run)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert any(r.get(f"calibrate/{state_key}_boxes", 0) > 0 for r in logged)
    assert f"map_by_{score}" in metrics and "map_by_oracle_iou" in metrics
    saved = checkpoint.load(checkpoint.find(run), optimizer_state=False)["state"]["task_state"][state_key]
    if score == "learned":
        assert saved["features"] == list(FEATURES)
    else:
        assert saved["crop"] == CROP and set(saved["weights"]) == set(VerifierNet(2).state_dict())
    # eval with the saved score: the written scores are its scores, and `score` reads the same mAP
    assert main(["eval", run]) == 0
    with open(os.path.join(run, "eval", "val", "metrics.json")) as f:
        evaluated = json.load(f)
    assert evaluated["map"] == pytest.approx(evaluated[f"map_by_{score}"])
    capsys.readouterr()
    assert main(["score", "detection", "--pred", f"{run}/eval/val/detections.json",
                 "--gt", f"{root}/annotations/instances_val.json"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == pytest.approx(evaluated["map"], abs=1e-9)
