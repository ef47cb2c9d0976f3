"""The captioning Task: every contract field, state round trip, metrics as pycocoevalcap's pipeline."""
import json
import shutil

import numpy as np
import pytest
import torch

from rewardtune.tasks import make_task
from rewardtune.tasks.captioning import caption_metrics, tokenize_caption
from test_captioning_data import CAPTIONS, make_config, make_dataset


@pytest.fixture
def task(tmp_path):
    make_dataset(tmp_path)
    return make_task(make_config(tmp_path, val_split="train"))


def test_contract_fields(task, tmp_path):
    splits = task.datasets()
    assert set(splits) == {"train", "val"} and len(splits["train"]) == 3
    example = splits["train"][0]
    tokens = task.codec.encode(example.target, np.random.default_rng(0))
    assert tokens[-1].item() == task.codec.end_token and len(tokens) <= task.codec.max_len
    assert task.codec.decode(tokens) in {tokenize_caption(c) for c in CAPTIONS[1]}
    assert task.primary_metric == "cider" and set(task.rewards) == {"cider"}
    assert task.sample_stats(["a b", "a b c d"], [None, None]) == {"mean_length": 3.0}
    image = task.visualize(splits["train"].rgb(0), "a red circle", example.target)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.shape[0] > 8


def test_cider_reward(task):
    targets = [{"refs": CAPTIONS[1]}, {"refs": CAPTIONS[1]}, {"refs": CAPTIONS[2]}]
    reward, parts = task.rewards["cider"](["A red circle.", "two blue squares", "two blue squares"], targets)
    assert reward.dtype == torch.float32 and reward.shape == (3,) and parts == {}
    assert reward[0] > reward[1] and reward[2] > reward[1]


def test_state_round_trip_rebuilds_the_same_task(task, tmp_path):
    state = json.loads(json.dumps(task.state))
    again = make_task(make_config(tmp_path / "nowhere"), state)  # no data needed
    assert again.codec.vocab.words == task.codec.vocab.words
    outputs = ["a red circle", "two squares", "a star"]
    targets = [{"refs": CAPTIONS[i]} for i in (1, 2, 3)]
    rewards, expected = again.rewards["cider"](outputs, targets)[0], task.rewards["cider"](outputs, targets)[0]
    assert torch.allclose(rewards, expected)


def test_metrics_and_predictions(task, tmp_path):
    outputs, ids = ["a red circle", "two squares", "a star"], [1, 2, 3]
    targets = [{"refs": CAPTIONS[i]} for i in ids]
    metrics = task.metrics(outputs, targets, ids)
    assert set(metrics) == {"cider", "bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "mean_length",
                            "distinct_captions", "vocab_used"}
    assert metrics["distinct_captions"] == 1.0 and metrics["vocab_used"] == 6.0  # a red circle two squares star
    task.write_predictions(outputs, None, ids, str(tmp_path / "eval"))
    written = json.load(open(tmp_path / "eval" / "captions.json"))
    assert written[0] == {"image_id": 1, "caption": "a red circle"}


def test_diversity_metrics_count_repeated_captions_and_distinct_words():
    from rewardtune.tasks.captioning.metrics import caption_metrics
    m = caption_metrics(["A red circle.", "a red circle", "a star"], [["a red circle"], ["a circle"], ["a star"]])
    assert m["distinct_captions"] == pytest.approx(2 / 3)  # the PTB tokenizer makes the first two equal
    assert m["vocab_used"] == 4.0  # a, red, circle, star


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")
def test_caption_metrics_equal_pycocoevalcap_pipeline():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    preds = ["A red circle.", "Two squares, blue!", "A star (green) and a circle.", "It's a circle."]
    refs = [CAPTIONS[1], CAPTIONS[2], CAPTIONS[3], CAPTIONS[1]]
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    ours = caption_metrics(preds, refs)
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-6)
    assert ours["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-9)
    assert ours["rougeL"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
