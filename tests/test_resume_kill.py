"""Runs killed with SIGKILL (mid-step, during and right after checkpoint writes) and re-run with the
same command end with parameters and metrics bit-identical to an uninterrupted run: MLE and reward,
and MLE with its batches read by two DataLoader workers (data.workers=2) against the run without.

The runs are real `python -m rewardtune pretrain|tune` processes on the toy task. This module is also
their task ("task": "test_resume_kill"): the toy task, with a switch that SIGKILLs the process in
the middle of the K-th step it runs (REWARDTUNE_TEST_KILL_MID_STEP=K, 0-based). Kills inside
checkpoint writes use the hook of rewardtune/checkpoint.py (REWARDTUNE_TEST_KILL_IN_CHECKPOINT).
"""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from rewardtune import checkpoint, cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MID_STEP_ENV = "REWARDTUNE_TEST_KILL_MID_STEP"
CONFIG = {"task": "test_resume_kill", "data": {"image_size": 16},
          "model": {"patch_size": 4, "width": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2},
          "train": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "eval_every": 6,
                    "checkpoint_every": 4, "log_every": 2, "seed": 3, "threads": 1}}
# with a KL term: its reference must be the weights the run started from, also after a resume
TUNE = ["--set", "train.num_samples=3", "--set", "train.lr=1e-3", "--set", "train.kl_weight=0.5"]
# (environment of one killed launch, checkpoint `latest` expected after the kill); each launch resumes
# from the `latest` the previous one left
MLE_KILLS = [({checkpoint.KILL_ENV: "4:done"}, "step-4"),  # right after a checkpoint
             ({checkpoint.KILL_ENV: "6:best"}, "step-4"),  # `best` moved, `latest` not yet
             ({MID_STEP_ENV: "3"}, "step-6"),  # in the middle of step 7 (resumed at 4)
             ({checkpoint.KILL_ENV: "8:files"}, "step-6"),  # half-written temporary folder
             ({checkpoint.KILL_ENV: "12:renamed"}, "step-8")]  # final folder in place, no pointer moved
TUNE_KILLS = [({MID_STEP_ENV: "2"}, None),  # in step 2, before any checkpoint: starts again from --init
              ({checkpoint.KILL_ENV: "8:files"}, "step-6"),
              ({checkpoint.KILL_ENV: "12:done"}, "step-12")]  # after the last checkpoint, before eval
WORKERS = ["--set", "data.workers=2"]
WORKER_KILLS = [({MID_STEP_ENV: "5"}, "step-4"),  # in the middle of step 6, workers reading ahead
                ({checkpoint.KILL_ENV: "8:files"}, "step-6")]  # resumed at 4: workers start again from step 4
REFERENCE = {"mle": "mle", "tuned": "tuned", "mle_workers": "mle"}  # the uninterrupted run each chain must equal


def make_task(config, state=None):
    """The toy task; with REWARDTUNE_TEST_KILL_MID_STEP=K, SIGKILL inside the K-th step this process runs."""
    import toy_task
    task = toy_task.make_task(config, state)
    if MID_STEP_ENV not in os.environ:
        return task
    kill_at, calls = int(os.environ[MID_STEP_ENV]), [0]

    def counted(fn, per_step):  # kill at the call made halfway through step `kill_at`
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at * per_step + per_step // 2 + 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapper

    codec = task.codec
    codec.encode = counted(codec.encode, config.train.batch_size)  # MLE: one call per target
    rewards = {name: counted(fn, 1) for name, fn in task.rewards.items()}  # reward: one call per step
    return dataclasses.replace(task, codec=codec, rewards=rewards)


def rewardtune(*args, env=None, killed=False):
    """Run `python -m rewardtune ARGS` (toy task on the path, one thread); check how it ended."""
    full_env = {k: v for k, v in os.environ.items() if k not in (MID_STEP_ENV, checkpoint.KILL_ENV)}
    full_env.update({"PYTHONPATH": os.pathsep.join([HERE, ROOT]), "OMP_NUM_THREADS": "1", **(env or {})})
    proc = subprocess.run([sys.executable, "-m", "rewardtune", *args], env=full_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    expected = -signal.SIGKILL if killed else 0
    assert proc.returncode == expected, f"{args} {env}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


def weights(run):
    return torch.load(os.path.join(checkpoint.find(run), "model.pt"), weights_only=True)


def records(run):
    """metrics.jsonl without the wall-clock fields (time, and the reward step's train/time_* split)."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time" and not k.startswith("train/time_")}
                for line in f]


def killed_then_resumed(args, run, kills):
    """Launch `args` once per kill (each SIGKILLed at its point), then once to the end."""
    seen = []
    for env, latest in kills:
        rewardtune(*args, env=env, killed=True)
        folder = os.path.join(run, "checkpoints")
        assert checkpoint.read_pointer(folder, "latest") == latest, env
        seen.append(sorted(os.listdir(folder)) if os.path.isdir(folder) else [])
    rewardtune(*args)
    return seen


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted and killed-and-resumed MLE and tuning runs (the two chains run side by side)."""
    tmp = tmp_path_factory.mktemp("kill")
    config = str(tmp / "config.json")
    with open(config, "w") as f:
        json.dump(CONFIG, f)
    paths = {name: str(tmp / name) for name in ("mle", "mle_killed", "tuned", "tuned_killed", "mle_workers_killed")}
    rewardtune("pretrain", config, "--out", paths["mle"])

    def mle_chain():
        return killed_then_resumed(["pretrain", config, "--out", paths["mle_killed"]], paths["mle_killed"],
                                   MLE_KILLS)

    def tune_chain():
        rewardtune("tune", config, "--init", paths["mle"], "--out", paths["tuned"], *TUNE)
        return killed_then_resumed(["tune", config, "--init", paths["mle"], "--out", paths["tuned_killed"], *TUNE],
                                   paths["tuned_killed"], TUNE_KILLS)

    def workers_chain():
        return killed_then_resumed(["pretrain", config, "--out", paths["mle_workers_killed"], *WORKERS],
                                   paths["mle_workers_killed"], WORKER_KILLS)

    with ThreadPoolExecutor(3) as pool:
        chains = {"mle_killed": mle_chain, "tuned_killed": tune_chain, "mle_workers_killed": workers_chain}
        futures = {name: pool.submit(chain) for name, chain in chains.items()}
        paths["listings"] = {name: future.result() for name, future in futures.items()}
    paths["config"] = config
    return paths


@pytest.mark.parametrize("stage", ["mle", "tuned", "mle_workers"])
def test_killed_runs_resume_bit_identical(runs, stage):
    reference = runs[REFERENCE[stage]]
    full, killed = weights(reference), weights(runs[f"{stage}_killed"])
    assert full.keys() == killed.keys()
    assert all(torch.equal(full[k], killed[k]) for k in full)
    # the log is the uninterrupted run's, line for line: no duplicated or missing steps
    assert records(runs[f"{stage}_killed"]) == records(reference)
    with open(os.path.join(reference, "eval", "val", "metrics.json")) as f, \
            open(os.path.join(runs[f"{stage}_killed"], "eval", "val", "metrics.json")) as g:
        assert json.load(f) == json.load(g)
    kills = {"mle": MLE_KILLS, "tuned": TUNE_KILLS, "mle_workers": WORKER_KILLS}[stage]
    print(f"{stage}: {len(kills)} kill points, all resumed bit-identical")


def test_half_written_checkpoint_is_ignored_and_removed(runs):
    """After the kill inside the write of step 8, `.tmp-step-8` held files but was never loaded."""
    after_kill = runs["listings"]["mle_killed"][3]  # MLE_KILLS[3] is "8:files"
    assert ".tmp-step-8" in after_kill and "step-8" not in after_kill
    for run in ("mle_killed", "tuned_killed", "mle_workers_killed"):
        names = os.listdir(os.path.join(runs[run], "checkpoints"))
        assert not [n for n in names if n.startswith(".")], names  # no temporary folder or pointer left
        for name in (n for n in names if n.startswith("step-")):
            checkpoint.load(os.path.join(runs[run], "checkpoints", name))  # every folder left is complete


def test_checkpoint_holds_the_whole_training_state(runs):
    ckpt = checkpoint.load(checkpoint.find(runs["tuned"]))
    state = ckpt["state"]
    assert state["step"] == 12 and state["task"] == "test_resume_kill" and state["task_state"] == {"seen": 1}
    assert state["config"]["train"]["stage"] == "reward" and state["config"]["train"]["num_samples"] == 3
    assert state["data_position"] == {"samples_seen": 96, "epoch": 1, "index_in_epoch": 32, "split_size": 64}
    assert state["baseline_state"] is None  # leave-one-out: nothing carried between steps
    assert {"optimizer", "scheduler"} <= set(ckpt["optim"]) and ckpt["optim"]["optimizer"]["state"]
    assert len(ckpt["rng"]["ranks"]) == len(state["rng"]) == 1  # one entry per rank
    assert set(state["rng"][0]) == {"python", "numpy"} and "torch" in ckpt["rng"]["ranks"][0]


def test_resume_into_another_task_or_shape_is_refused_with_one_line(runs, tmp_path, capsys):
    run = str(tmp_path / "mle")
    shutil.copytree(runs["mle"], run)
    before = {n: open(os.path.join(run, n), "rb").read() for n in ("config.json", "metrics.jsonl")}
    other_task = str(tmp_path / "toy.json")
    with open(other_task, "w") as f:
        json.dump({**CONFIG, "task": "toy_task"}, f)
    for args, message in (([runs["config"], "--set", "model.width=64"], "does not fit this model"),
                          ([other_task], "checkpoint is for task 'test_resume_kill', not 'toy_task'")):
        assert cli.main(["pretrain", *args, "--out", run]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("rewardtune: error: "), err
    after = {n: open(os.path.join(run, n), "rb").read() for n in before}
    assert after == before  # nothing written
