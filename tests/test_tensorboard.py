"""train.tensorboard: the scalars of metrics.jsonl and drawn val outputs as TensorBoard events, read back
with tensorboard's EventAccumulator (also after a resume); without the package, one ConfigError line."""
import json
import os

import pytest

from rewardtune import metrics_log
from rewardtune.errors import ConfigError
from rewardtune.train import TENSORBOARD_IMAGES, train

from test_train_core import interrupted_at_step_7, toy

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def events(run):
    acc = EventAccumulator(os.path.join(run, "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def jsonl_scalars(run, key):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [(r["step"], r[key]) for r in map(json.loads, f) if key in r]


def test_events_hold_the_logged_scalars_and_drawn_val_outputs_after_a_resume(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    # steps 5-7 are logged, then the run resumes from step 4
    interrupted_at_step_7(monkeypatch, lambda: train(toy(tensorboard=True), run, evaluate_at_end=False))
    train(toy(tensorboard=True), run, evaluate_at_end=False)
    acc = events(run)
    for key in ("train/loss", "train/lr", "train/grad_norm", "val/accuracy"):
        logged = [(e.step, e.value) for e in acc.Scalars(key)]
        expected = jsonl_scalars(run, key)
        assert [s for s, _ in logged] == [s for s, _ in expected], key  # each step once: the crash's purged
        assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(logged, expected)), key
    assert "time" not in acc.Tags()["scalars"]
    tags = sorted(acc.Tags()["images"])
    assert tags == [f"val_outputs/{i}" for i in range(TENSORBOARD_IMAGES)]
    shots = acc.Images(tags[0])
    assert [s.step for s in shots] == [6, 12]  # the validations (eval_every 6)
    assert (shots[0].width, shots[0].height) == (16, 16)


def test_without_the_package_the_option_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"train.tensorboard.*pip install 'rewardtune\[tensorboard\]'"):
        train(toy(tensorboard=True), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # nothing written
    metrics_log.check_tensorboard(False)  # not asked for: no check
