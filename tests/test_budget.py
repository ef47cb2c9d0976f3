"""The budget tools: the held-out reward logged at each validation, and the report's budget plot."""
import json
import os

import torch

from rewardtune.evaluate import held_out_reward, load_run
from rewardtune.report.html import write_report
from rewardtune.outputs import resolve_reward
from rewardtune.train import train
from test_train_core import records, toy, weights


def test_held_out_reward_is_logged_in_every_stage_and_is_the_same_draws_each_time(tmp_path):
    mle = str(tmp_path / "mle")
    train(toy(steps=4, eval_every=2, eval_reward_samples=3, eval_images=8), mle)
    logged = [r for r in records(mle) if "val/reward" in r]
    assert [r["step"] for r in logged] == [2, 4] and all(0 <= r["val/reward"] <= 1 for r in logged)
    # recomputing it from the saved model gives the logged figure: fixed draws, not the global RNG
    cfg, task, model = load_run(mle, "latest")
    split = task.datasets()["val"]
    reward_fn = resolve_reward(task, cfg.train.reward)
    torch.manual_seed(123)  # the global RNG does not enter
    again = held_out_reward(model, task, split, range(8), 3, reward_fn, seed=cfg.train.seed)
    assert again["reward"] == logged[-1]["val/reward"]
    # it is an average over the draws: 3 samples x 8 images of a 0/1 reward
    assert abs(again["reward"] * 24 - round(again["reward"] * 24)) < 1e-9
    # and it leaves the training itself alone: the same weights as a run that did not log it
    plain = str(tmp_path / "plain")
    train(toy(steps=4, eval_every=2, eval_images=8), plain)
    a, b = weights(mle), weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_report_plots_tuned_and_control_against_images_seen(tmp_path):
    mle, tuned, control = (str(tmp_path / n) for n in ("mle", "tuned", "control"))
    train(toy(steps=4, eval_every=4), mle)
    train(toy(stage="reward", lr=1e-3, schedule="constant", num_samples=4, steps=4, eval_every=2,
              eval_reward_samples=2), tuned, init_dir=mle)
    train(toy(steps=4, eval_every=2, eval_reward_samples=2, lr=1e-4, schedule="constant", warmup_steps=0), control,
          init_dir=mle)
    out = write_report([tuned, control], str(tmp_path / "r.html"))
    html = open(out).read()
    budget = html.split('id="budget"')[1].split('id="gallery"')[0]
    assert "<img" in budget and "Needs two" not in budget
    single = open(write_report([tuned], str(tmp_path / "one.html"))).read()
    assert "Needs two or more runs" in single.split('id="budget"')[1].split('id="gallery"')[0]
