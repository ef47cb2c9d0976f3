"""The box verifier score (task_options.score = "verifier", tasks/detection/verifier.py): crops, fit, state and
the codec's scores (a run that saves it for `eval` and `score`: test_detection_score_head.py)."""
import json

import numpy as np
import torch

from rewardtune.tasks.detection import DetectionCodec
from rewardtune.tasks.detection.score_head import spearman
from rewardtune.tasks.detection.verifier import (CONTEXT, CROP, VerifierNet, box_crops, fit_verifier, from_state,
                                                  score_crops, to_state, verifier_scores)


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
    unscored = codec.decode(tokens, image=image)  # no step log-probs (a reward step's samples): no scores computed
    assert "score_verifier" not in unscored


def test_scores_are_computed_a_batch_at_a_time_with_the_same_result():
    torch.manual_seed(0)
    net = VerifierNet(3).eval()
    crops, classes = torch.rand(37, 3, CROP, CROP), torch.randint(0, 3, (37,))
    with torch.no_grad():
        whole = torch.sigmoid(net(crops, classes)).numpy()
    batched = score_crops(net, crops, classes, batch_size=8)  # 5 batches, the last of 5 crops
    assert batched.shape == (37,) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6)
    assert score_crops(net, crops[:0], classes[:0]).shape == (0,)
