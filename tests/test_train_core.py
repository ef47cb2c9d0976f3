"""The one loop on the toy task: steps move the model, resume is exact, bad configs fail cleanly."""
import json
import os
import pickle

import pytest
import torch

from rewardtune import checkpoint
from rewardtune.config import from_dict, load
from rewardtune.errors import ConfigError, UserError
from rewardtune.train import _Loop, batch_indices, train

TOY = {"task": "toy_task", "data": {"image_size": 16},
       "model": {"patch_size": 4, "width": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2},
       "train": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "eval_every": 6,
                 "checkpoint_every": 4, "log_every": 2, "seed": 3}}


def toy(**train):
    raw = json.loads(json.dumps(TOY))
    raw["train"].update(train)
    return from_dict(raw)


def toy_mle_and_tuned(root, task=None):
    """Train a 4-step MLE toy run and a 2-step reward run from it under `root`: (mle dir, tuned dir)."""
    def config(**train_options):
        c = toy(**train_options)
        if task:
            c.task = task
        return c
    mle, tuned = os.path.join(str(root), "mle"), os.path.join(str(root), "tuned")
    train(config(steps=4, eval_every=4, checkpoint_every=4), mle)
    train(config(stage="reward", lr=1e-3, schedule="constant", num_samples=4, steps=2, eval_every=1, log_every=1,
                 checkpoint_every=2), tuned, init_dir=mle)
    return mle, tuned


def weights(run):
    return torch.load(os.path.join(checkpoint.find(run), "model.pt"), weights_only=True)


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_mle_then_reward_steps_change_parameters_and_loss(tmp_path):
    mle = str(tmp_path / "mle")
    train(toy(), mle)
    losses = [r["train/loss"] for r in records(mle) if "train/loss" in r]
    assert losses[-1] < losses[0]
    before = weights(mle)
    tuned = str(tmp_path / "tuned")
    train(toy(stage="reward", lr=1e-3, schedule="constant", num_samples=4, steps=4), tuned, init_dir=mle)
    after = weights(tuned)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rec = [r for r in records(tuned) if "train/reward" in r]
    assert rec and all(0.0 <= r["train/reward"] <= 1.0 for r in rec)
    assert os.path.exists(os.path.join(tuned, "eval", "val", "metrics.json"))


def test_monitor_picks_best_checkpoint_by_the_named_metric_and_sign(tmp_path):
    picked = {}
    for monitor in ("-eval_index", "eval_index"):
        run = str(tmp_path / monitor)
        config = toy(eval_every=2, monitor=monitor)
        config.task = "toy_task_eval_index"
        train(config, run)
        evals = [(r["step"], r["val/eval_index"]) for r in records(run) if "val/eval_index" in r]
        sign = -1.0 if monitor.startswith("-") else 1.0
        best_step = max(evals, key=lambda e: (sign * e[1], -e[0]))[0]  # first step reaching the best value
        picked[monitor] = checkpoint.load(checkpoint.find(run, "best"), optimizer_state=False)["state"]["step"]
        assert picked[monitor] == best_step, (monitor, evals)
    assert picked["-eval_index"] == 2 and picked["eval_index"] == 12
    with pytest.raises(ConfigError, match="train.monitor.*'nope'"):
        train(toy(monitor="nope"), str(tmp_path / "nope"))


def interrupted_at_step_7(monkeypatch, run) -> None:
    """Call run() with the loop's step 7 raising KeyboardInterrupt (a Ctrl-C mid-run); the loop is restored after."""
    original = _Loop._step

    def crash_at_7(self, step, *batch):
        if step == 7:
            raise KeyboardInterrupt
        return original(self, step, *batch)

    monkeypatch.setattr(_Loop, "_step", crash_at_7)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(_Loop, "_step", original)


@pytest.mark.parametrize("stage,options", [("mle", {}), ("reward", {}),
                                           ("mle", {"precision": "bf16", "grad_accum_steps": 2}),
                                           ("reward", {"precision": "bf16", "grad_accum_steps": 2})])
def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch, stage, options):
    extra = dict(stage="reward", num_samples=3, lr=1e-3, **options) if stage == "reward" else options
    init = None
    if stage == "reward":
        init = str(tmp_path / "init")
        train(toy(steps=4), init, evaluate_at_end=False)
    full = str(tmp_path / "full")
    train(toy(**extra), full, init_dir=init, evaluate_at_end=False)
    broken = str(tmp_path / "broken")
    interrupted_at_step_7(monkeypatch, lambda: train(toy(**extra), broken, init_dir=init, evaluate_at_end=False))
    assert int(checkpoint.find(broken).rsplit("-", 1)[1]) < 8  # resumes from an earlier step
    train(toy(**extra), broken, init_dir=init, evaluate_at_end=False)
    a, b = weights(full), weights(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in records(broken) if "train/loss" in r]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


def test_batch_indices_cover_each_epoch_and_shard_by_rank():
    n, batch = 10, 4
    seen = [i for step in range(5) for i in batch_indices(step, batch, n, seed=0)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    both = batch_indices(3, batch, n, 0, 0, 2) + batch_indices(3, batch, n, 0, 1, 2)
    assert both == batch_indices(3, batch, n, 0)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        from_dict({"train": {"lrr": 1}})
    with pytest.raises(ConfigError, match="train.lr"):
        from_dict({"train": {"lr": -1}})
    with pytest.raises(ConfigError, match="model.stem"):
        from_dict({"model": {"stem": "resnet"}})
    with pytest.raises(ConfigError, match="train.batch_size"):
        from_dict({"train": {"batch_size": "big"}})
    path = tmp_path / "c.json"
    path.write_text('{"train": {"lr": 0.1')
    with pytest.raises(ConfigError, match="c.json"):
        load(str(path))
    path.write_text(json.dumps(TOY))
    config = load(str(path), ["train.lr=3e-5", "model.width=64"])
    assert config.train.lr == 3e-5 and config.model.width == 64


def test_run_config_is_a_valid_config(tmp_path):
    run = str(tmp_path / "run")
    train(toy(steps=2, eval_every=2, checkpoint_every=2), run, evaluate_at_end=False)
    config = load(os.path.join(run, "config.json"))
    assert config.to_dict() == toy(steps=2, eval_every=2, checkpoint_every=2).to_dict()


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    run = str(tmp_path / "run")
    train(toy(steps=2, eval_every=2, checkpoint_every=2), run, evaluate_at_end=False)
    path = checkpoint.find(run)
    with open(os.path.join(path, "model.pt"), "wb") as f:
        pickle.dump({"w": Boom()}, f)
    with pytest.raises(UserError, match="unsafe|not a rewardtune"):
        checkpoint.load(path)


def test_checkpoint_of_another_model_shape_is_refused(tmp_path):
    run = str(tmp_path / "run")
    train(toy(steps=2, eval_every=2, checkpoint_every=2), run, evaluate_at_end=False)
    raw = json.loads(json.dumps(TOY))
    raw["model"]["width"] = 64
    with pytest.raises(UserError, match="does not fit"):
        train(from_dict(raw), str(tmp_path / "other"), init_dir=run)


def test_the_standing_checkpoint_is_read_the_same_way_by_tune_eval_analyze_and_report(tmp_path):
    """A run with patience whose best (step 2) is not its latest (step 12): every reader takes best."""
    from rewardtune.analysis import _models
    from rewardtune.evaluate import evaluate_run
    from rewardtune.report.gallery import build_gallery
    from rewardtune.train import _starting_point

    mle = str(tmp_path / "mle")
    config = toy(eval_every=2, checkpoint_every=2, monitor="-eval_index", patience=10)
    config.task = "toy_task_eval_index"  # "-eval_index" is best at the first evaluation only
    train(config, mle, evaluate_at_end=False)
    best, latest = checkpoint.find(mle, "best"), checkpoint.find(mle, "latest")
    assert best != latest and checkpoint.standing(mle) == "best"
    assert _starting_point(toy(stage="reward"), str(tmp_path / "tuned"), mle) == (None, best)  # tune --init
    assert evaluate_run(mle) and json.load(open(os.path.join(mle, "eval", "val", "metrics.json")))["checkpoint"] == "best"
    tuned = str(tmp_path / "tuned")
    tune = toy(stage="reward", lr=1e-3, schedule="constant", num_samples=2, steps=2, eval_every=2)
    tune.task = config.task
    train(tune, tuned, init_dir=mle)
    models = _models(tuned, mle, None)  # analyze: the init at the checkpoint tuning started from
    assert models["mle"][1] == "best" and models["tuned"][1] == "latest"
    assert [c.checkpoint for c in build_gallery([mle, tuned], ["mle", "tuned"], 2).columns] == ["best", "latest"]
    # without patience the standing checkpoint is the latest, even though `best` is written
    plain = str(tmp_path / "plain")
    again = toy(eval_every=2, checkpoint_every=2, monitor="-eval_index")
    again.task = config.task
    train(again, plain, evaluate_at_end=False)
    assert checkpoint.find(plain, "best") != checkpoint.find(plain, "latest") and checkpoint.standing(plain) == "latest"


def test_a_run_that_did_its_steps_goes_on_when_asked_for_more_and_an_early_stop_is_final(tmp_path, monkeypatch):
    constant = dict(schedule="constant", warmup_steps=0, steps=8, eval_every=4, checkpoint_every=4)
    full, extended = str(tmp_path / "full"), str(tmp_path / "extended")
    train(toy(**constant), full, evaluate_at_end=False)
    train(toy(**{**constant, "steps": 4}), extended, evaluate_at_end=False)
    train(toy(**{**constant, "steps": 4}), extended, evaluate_at_end=False)  # the same steps again: nothing to do
    assert int(checkpoint.find(extended).rsplit("-", 1)[1]) == 4
    train(toy(**constant), extended, evaluate_at_end=False)  # train.steps 4 -> 8: steps 5..8, as one 8-step run
    a, b = weights(full), weights(extended)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in records(extended) if "train/loss" in r] == [2, 4, 6, 8]

    stopped = str(tmp_path / "stopped")
    def stop(self, done):  # patience says stop at the first evaluation
        self.state["best_metric"] = 0.0
        return False, True
    monkeypatch.setattr(_Loop, "_validate", stop)
    train(toy(**{**constant, "steps": 8}), stopped, evaluate_at_end=False)
    monkeypatch.undo()
    assert int(checkpoint.find(stopped).rsplit("-", 1)[1]) == 4
    train(toy(**{**constant, "steps": 12}), stopped, evaluate_at_end=False)  # an early stop stays final
    assert int(checkpoint.find(stopped).rsplit("-", 1)[1]) == 4
