"""The box verifier score (task_options.score = "verifier", tasks/detection/verifier.py): crops, fit, state,
the codec's scores, and a run that saves it for `eval` and `score`."""
import json
import os

import numpy as np
import pytest
import torch

from rewardtune import checkpoint
from rewardtune.cli import main
from rewardtune.config import apply_overrides, from_dict
from rewardtune.data.shapes import generate_shapes
from rewardtune.recipes import recipe_dict
from rewardtune.tasks.detection import DetectionCodec
from rewardtune.tasks.detection.score_head import spearman
from rewardtune.tasks.detection.verifier import (CONTEXT, CROP, VerifierNet, box_crops, fit_verifier, from_state,
                                                  to_state, verifier_scores)
from rewardtune.train import train
from test_detection_score_head import TINY


def test_a_crop_shows_its_box_in_the_middle_with_context_around():
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 8:16, 16:24] = 1.0  # an 8 x 8 white square at rows 8..15, columns 16..23
    crop = box_crops(image, [np.array([[8 / 32, 16 / 32, 16 / 32, 24 / 32]])])
    assert crop.shape == (1, 3, CROP, CROP)
    inner = CROP / CONTEXT  # the box spans the middle CROP / CONTEXT pixels of the crop
    lo, hi = int((CROP - inner) / 2), int((CROP + inner) / 2)
    assert torch.all(crop[0, :, lo + 1:hi - 1, lo + 1:hi - 1] > 0.99)
    assert torch.all(crop[0, :, :lo - 1] < 0.01) and torch.all(crop[0, :, :, hi + 1:] < 0.01)
    assert box_crops(image, [np.zeros((0, 4))]).shape == (0, 3, CROP, CROP)


def test_fit_learns_what_the_crops_show_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    crops = torch.rand(256, 3, CROP, CROP, generator=gen) * 0.2
    bright = torch.rand(256, generator=gen)
    crops[:, :, 8:16, 8:16] += bright[:, None, None, None]  # the target is how bright the middle is
    classes = torch.zeros(256, dtype=torch.long)
    before = torch.random.get_rng_state()
    net, logs = fit_verifier(crops, classes, bright, num_classes=2, seed=1, epochs=12, batch_size=64)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG untouched: resume stays exact
    again, _ = fit_verifier(crops, classes, bright, num_classes=2, seed=1, epochs=12, batch_size=64)
    with torch.no_grad():
        scores = torch.sigmoid(net(crops, classes))
        assert torch.equal(scores, torch.sigmoid(again(crops, classes)))
    assert spearman(scores.numpy(), bright.numpy()) > 0.9 and logs["loss"] > 0


def test_the_state_round_trips_through_json_and_the_codec_scores_with_it():
    torch.manual_seed(0)
    net = VerifierNet(2).eval()
    state = json.loads(json.dumps(to_state(net, {"loss": 0.5})))
    image = torch.rand(3, 32, 32)
    boxes, classes = np.array([[0.1, 0.1, 0.5, 0.6], [0.2, 0.3, 0.9, 0.8]]), np.array([0, 1])
    expected = verifier_scores(net, image, boxes, classes)
    assert np.array_equal(verifier_scores(from_state(state), image, boxes, classes), expected)
    codec = DetectionCodec(2, bins=8, max_boxes=3, score="verifier", verifier=state)
    tokens = [1, 1, 4, 5, codec.class_token, codec.right_token, 2, 3, 7, 6, codec.class_token + 1,
              codec.right_token, codec.end_token]
    lp = torch.log_softmax(torch.randn(len(tokens), codec.vocab_size), -1)
    out = codec.decode(tokens, lp, image=image)
    assert np.array_equal(out["scores"], verifier_scores(net, image, out["boxes"], out["classes"]))
    assert np.array_equal(out["scores"], out["score_verifier"])
    no_image = codec.decode(tokens, lp)  # without the image: token probability, and no verifier score claimed
    assert np.array_equal(no_image["scores"], no_image["score_prob"]) and "score_verifier" not in no_image


def test_a_run_saves_its_verifier_and_eval_and_score_use_it(tmp_path, capsys):
    root = str(tmp_path / "data")
    generate_shapes(root, num_train=16, num_val=8, num_test=2, image_size=32, seed=2, level="faint")
    run = str(tmp_path / "run")
    tiny = [o.replace('"score": "learned"', '"score": "verifier"') for o in TINY]
    cfg = from_dict(apply_overrides(recipe_dict("detection_demo_mle"), [f"data.root={json.dumps(root)}", *tiny]))
    metrics = train(cfg, run)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert any(r.get("calibrate/verifier_boxes", 0) > 0 for r in logged)
    assert "map_by_verifier" in metrics and "map_by_oracle_iou" in metrics
    saved = checkpoint.load(checkpoint.find(run), optimizer_state=False)["state"]["task_state"]["verifier"]
    assert saved["crop"] == CROP and set(saved["weights"]) == set(VerifierNet(2).state_dict())
    assert main(["eval", run]) == 0
    with open(os.path.join(run, "eval", "val", "metrics.json")) as f:
        evaluated = json.load(f)
    assert evaluated["map"] == pytest.approx(evaluated["map_by_verifier"])
    capsys.readouterr()
    assert main(["score", "detection", "--pred", f"{run}/eval/val/detections.json",
                 "--gt", f"{root}/annotations/instances_val.json"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == pytest.approx(evaluated["map"], abs=1e-9)
