"""Non-finite losses and gradients: the step is skipped, counted and logged with its batch ids; too
many in a row stop the run with one clear line (exit code 2) and the last good checkpoint intact."""
import json
import os
import subprocess
import sys

import torch

from rewardtune import checkpoint, steps
from rewardtune.config import from_dict
from rewardtune.train import _Loop, batch_indices, train

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOY = {"task": "toy_task", "data": {"image_size": 16},
       "model": {"patch_size": 4, "width": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2},
       "train": {"steps": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "eval_every": 4,
                 "checkpoint_every": 4, "log_every": 1, "seed": 3, "threads": 1}}
NAN_LOSS_STEPS, NAN_GRAD_STEPS = (2, 5), (3,)


def poisoned_mle_step(ctx, images, targets, positions):
    """The MLE step (its backward passes already run), with a NaN loss or a NaN gradient at the steps above."""
    loss, logs = steps.mle_step(ctx, images, targets, positions)
    step = positions[0] // ctx.train.batch_size
    if step in NAN_LOSS_STEPS:
        loss = loss * float("nan")
    if step in NAN_GRAD_STEPS:
        next(ctx.model.parameters()).grad.view(-1)[0] = float("nan")  # the loss stays finite
    return loss, logs


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_nonfinite_steps_are_skipped_counted_and_logged(tmp_path, monkeypatch):
    monkeypatch.setitem(steps.STEPS, "mle", poisoned_mle_step)
    params, original = [], _Loop._step

    def step_and_keep_parameters(loop, *args):  # (step, batch)
        logs = original(loop, *args)
        params.append([p.detach().clone() for p in loop.model.parameters()])
        return logs

    monkeypatch.setattr(_Loop, "_step", step_and_keep_parameters)
    run = str(tmp_path / "run")
    threads = torch.get_num_threads()
    train(from_dict(TOY), run, evaluate_at_end=False)
    torch.set_num_threads(threads)
    bad = sorted(NAN_LOSS_STEPS + NAN_GRAD_STEPS)
    for step in range(1, TOY["train"]["steps"]):  # a skipped step leaves every parameter as it was
        same = all(torch.equal(a, b) for a, b in zip(params[step - 1], params[step]))
        assert same == (step in bad), step
    skipped = [r for r in records(run) if "train/nonfinite_skipped" in r]
    assert [r["step"] for r in skipped] == [s + 1 for s in bad]
    for r in skipped:  # the offending batch, by the dataset's image ids
        ids = batch_indices(r["step"] - 1, 8, 64, seed=3)  # toy train ids are the indices 0..63
        assert r["batch_ids"] == [str(i) for i in ids]
    state = checkpoint.load(checkpoint.find(run))["state"]
    assert state["nonfinite_total"] == 3 and state["nonfinite_run"] == 0 and state["step"] == 8
    logged = [r for r in records(run) if "train/lr" in r]  # the means leave skipped steps out
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert [("train/loss" in r) for r in logged] == [s not in bad for s in range(8)]
    assert all(r["train/loss"] == r["train/loss"] for r in logged if "train/loss" in r)  # no NaN


CALLS = [0]


def nan_after_5(outputs, targets):
    """A reward (`--reward test_nonfinite:nan_after_5`): accuracy for 5 steps, then NaN."""
    CALLS[0] += 1
    r = torch.tensor([float(o == t) for o, t in zip(outputs, targets)])
    return (r * float("nan") if CALLS[0] > 5 else r), {}


def test_too_many_nonfinite_steps_in_a_row_stop_the_run_cleanly(tmp_path):
    mle = str(tmp_path / "mle")
    threads = torch.get_num_threads()
    train(from_dict({**TOY, "train": {**TOY["train"], "steps": 2}}), mle, evaluate_at_end=False)
    torch.set_num_threads(threads)
    config = str(tmp_path / "config.json")
    with open(config, "w") as f:
        json.dump(TOY, f)
    run = str(tmp_path / "tuned")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, ROOT]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "rewardtune", "tune", config, "--init", mle, "--out", run,
                           "--reward", "test_nonfinite:nan_after_5", "--set", "train.num_samples=2",
                           "--set", "train.max_nonfinite=2"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rewardtune: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = os.path.join(run, "checkpoints", "step-4")
    assert errors[0] == (f"rewardtune: error: stopped at step 8: 3 non-finite losses or gradients in a row "
                         f"(train.max_nonfinite=2); last good checkpoint: {last}")
    # steps 5, 6, 7 (0-based) were skipped; step-4 is still `latest`, complete and finite
    assert [r["step"] for r in records(run) if "train/nonfinite_skipped" in r] == [6, 7, 8]
    assert checkpoint.find(run) == last and sorted(os.listdir(os.path.dirname(last))) == ["best", "latest",
                                                                                           "step-4"]
    saved = checkpoint.load(last)
    assert saved["state"]["step"] == 4 and saved["state"]["nonfinite_total"] == 0
    assert all(torch.isfinite(w).all() for w in saved["model"].values())
