"""UViM's stage I in the one loop (train.stage = "codec"): the dense targets of panoptic and colorization on
hand-made targets, a tiny stage I run through `train()`, resume after SIGKILL bit-identical, and the config
errors of the stage.

This module is also the task of the killed runs ("task": "test_codec_stage"): panoptic, with a switch that
SIGKILLs the process in the middle of its K-th step (REWARDTUNE_TEST_KILL_MID_STEP=K, 0-based), and the
quantiser's usage decay shortened so that dead codes are restarted within the few steps of the test.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from rewardtune import checkpoint, cli
from rewardtune.config import from_dict
from rewardtune.data.shapes import generate_shapes
from rewardtune.model import vq
from rewardtune.model.uvim import CodeModel
from rewardtune.tasks.colorization import ColorTarget, render
from rewardtune.tasks.colorization.color import rgb_to_lab
from rewardtune.tasks.colorization.dense import DENSE as COLOR_DENSE
from rewardtune.tasks.panoptic.codec import PanopticCodec
from rewardtune.tasks.panoptic.dense import PanopticDense
from rewardtune.tasks.panoptic.pq import pq_image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MID_STEP_ENV = "REWARDTUNE_TEST_KILL_MID_STEP"
FAST_DECAY = 0.5  # the quantiser's usage decay in this module's runs: unused codes die within a few steps

CATEGORIES = [{"id": 1, "name": "circle", "isthing": 1}, {"id": 2, "name": "square", "isthing": 1},
              {"id": 101, "name": "sky", "isthing": 0}, {"id": 102, "name": "grass", "isthing": 0}]


# ---- the task of the killed runs ---------------------------------------------------------------------------
def make_task(config, state=None):
    """Panoptic; with REWARDTUNE_TEST_KILL_MID_STEP=K, SIGKILL inside the K-th step this process runs."""
    import dataclasses

    from rewardtune.tasks.panoptic import make_task as panoptic_task
    vq.USAGE_DECAY = FAST_DECAY
    task = panoptic_task(config, state)
    if MID_STEP_ENV not in os.environ:
        return task
    kill_at, calls = int(os.environ[MID_STEP_ENV]), [0]
    per_step = config.train.grad_accum_steps  # the step calls the loss once per micro-batch
    loss = task.dense.loss

    def counted(prediction, targets):
        calls[0] += 1
        if calls[0] == kill_at * per_step + 1:  # after the forward of step `kill_at`, before its backward
            os.kill(os.getpid(), signal.SIGKILL)
        return loss(prediction, targets)

    return dataclasses.replace(task, dense=dataclasses.replace(task.dense, loss=counted))


# ---- panoptic: hand-made targets ---------------------------------------------------------------------------
def hand_target(size=8):
    """sky (top), grass (bottom), three circles (one crowd), one square, a void pixel."""
    ids = np.full((size, size), 11, np.int32)  # sky
    ids[size // 2:] = 12  # grass
    ids[1:3, 1:3] = 21  # circle A (first in raster order)
    ids[5:7, 5:7] = 22  # circle B
    ids[1:3, 5:7] = 23  # square
    ids[6, 1:3] = 24  # a crowd circle
    ids[0, 0] = 0  # void
    segments = [{"id": 11, "category_id": 101}, {"id": 12, "category_id": 102},
                {"id": 22, "category_id": 1}, {"id": 21, "category_id": 1},
                {"id": 23, "category_id": 2}, {"id": 24, "category_id": 1, "iscrowd": 1}]
    for s in segments:
        s.update(isthing=int(s["category_id"] < 100), iscrowd=s.get("iscrowd", 0), area=int((ids == s["id"]).sum()))
    return {"map": ids, "segments": segments}


def perfect_logits(dense, targets):
    """Logits that put all the weight on the truth's labels (what a perfect decoder would output)."""
    return dense.to_input(targets) * 20.0 - 10.0


def test_panoptic_dense_labels_slots_by_first_raster_appearance():
    dense = PanopticDense(CATEGORIES, max_instances=2, image_size=8)
    sem, slot = dense.labels([hand_target()])
    sem, slot = sem[0], slot[0]
    # semantic: 0 void, 1 sky, 2 grass, 3 circle, 4 square (stuff first, then things, by category id)
    assert sem[0, 0] == 0 and sem[0, 7] == 1 and sem[7, 7] == 2 and sem[1, 1] == 3 and sem[5, 5] == 3
    assert sem[1, 5] == 4 and sem[6, 1] == 0  # crowd -> void
    # circle A appears first in raster order: slot 1, though it is listed second; B slot 2; the square slot 1
    assert slot[1, 1] == 1 and slot[5, 5] == 2 and slot[1, 5] == 1 and slot[0, 7] == 0 and slot[7, 7] == 0
    x = dense.to_input([hand_target()])
    assert x.shape == (1, dense.n_sem + 3, 8, 8) and torch.equal(x.sum(1), torch.full((1, 8, 8), 2.0))


def test_panoptic_dense_drops_instances_beyond_max_instances():
    dense = PanopticDense(CATEGORIES, max_instances=1, image_size=8)
    sem, slot = dense.labels([hand_target()])
    assert sem[0, 5, 5] == 0 and slot[0, 5, 5] == 0  # circle B has no slot left: void
    assert sem[0, 1, 1] == 3 and slot[0, 1, 1] == 1


def test_panoptic_perfect_prediction_gives_back_the_truth_as_the_grid_codec_would():
    target = hand_target()
    dense = PanopticDense(CATEGORIES, max_instances=4, image_size=8)
    output = dense.to_outputs(perfect_logits(dense, [target]))[0]
    # exactly the grid codec's output format and ids (one cell per pixel)
    codec = PanopticCodec(CATEGORIES, 8, 4, 8)
    expected = codec.decode(codec.encode(target).tolist())
    assert output["map"].dtype == np.int32 and np.array_equal(output["map"], expected["map"])
    assert output["segments"] == expected["segments"]
    assert set(output["segments"][0]) == {"id", "category_id", "isthing", "iscrowd", "area"}
    assert pq_image(output, target) == pytest.approx((1.0, 1.0, 1.0))
    # a thing pixel whose slot logit says "none" still takes its best real slot
    logits = perfect_logits(dense, [target])
    logits[0, dense.n_sem:, 1, 1] = torch.tensor([5.0, 0.0, 1.0, 0.0, 0.0])  # none > slot 2 > others
    assert dense.to_outputs(logits)[0]["map"][1, 1] == codec.decode(codec.encode(target).tolist())["map"][5, 5]


def test_panoptic_loss_is_low_for_the_truth_and_counts_slots_on_thing_pixels_only():
    target = hand_target()
    dense = PanopticDense(CATEGORIES, max_instances=2, image_size=8)
    good = perfect_logits(dense, [target]).requires_grad_(True)
    loss, logs = dense.loss(good, [target])
    assert loss.item() < 1e-6 and logs["pixel_accuracy"] == 1.0
    loss.backward()
    assert good.grad is not None
    wrong = perfect_logits(dense, [target])
    wrong[0, dense.n_sem:] = wrong[0, dense.n_sem:].roll(1, 0)  # every slot label wrong
    _, logs = dense.loss(wrong, [target])
    assert logs["semantic_loss"] < 1e-6 and logs["slot_loss"] > 1.0
    things = (dense.labels([target])[1] > 0).float().mean().item()
    assert logs["slot_loss"] == pytest.approx(20.0 * things, rel=1e-4)  # 0 on stuff and void pixels


# ---- colorization -------------------------------------------------------------------------------------------
def test_colorization_perfect_prediction_gives_back_the_chroma_and_the_image():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    targets = [ColorTarget.from_rgb(im) for im in rgb]
    x = COLOR_DENSE.to_input(targets)
    assert x.shape == (2, 3, 16, 16) and x[:, :2].abs().max() <= 1.2
    assert torch.allclose(x[:, 2] * 255, torch.from_numpy(np.stack([t.gray for t in targets])).float())
    outputs = COLOR_DENSE.to_outputs(x[:, :2])
    truth = rgb_to_lab(rgb.astype(np.float64) / 255)[..., 1:]
    assert outputs[0].shape == (16, 16, 2) and outputs[0].dtype == np.float32
    assert np.allclose(np.stack(outputs), truth, atol=1e-3)
    rendered = render(targets[0].gray, outputs[0]).numpy().astype(int)  # grid = image size renders as is
    assert np.abs(rendered - rgb[0]).mean() < 1.5
    loss, logs = COLOR_DENSE.loss(x[:, :2], targets)
    assert loss.item() < 1e-10 and COLOR_DENSE.loss(torch.zeros(2, 2, 16, 16), targets)[0].item() > 0.01


# ---- a tiny stage I run ---------------------------------------------------------------------------------------
TINY = {"task_options": {"grid": 4, "max_instances": 4}, "data": {"image_size": 32},
        "code": {"grid": 4, "codebook_size": 16, "code_dim": 8, "width": 32, "depth": 1, "heads": 2,
                 "head_channels": 8, "restart_every": 3},
        "train": {"stage": "codec", "steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "eval_every": 6,
                  "checkpoint_every": 4, "log_every": 2, "seed": 3, "threads": 1, "eval_images": 8,
                  "monitor": "pq"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("codec_world"))
    generate_shapes(root, num_train=24, num_val=8, num_test=2, image_size=32, seed=1)
    return root


def tiny_config(world, task="panoptic", **train):
    raw = json.loads(json.dumps(TINY))
    raw["task"], raw["data"]["root"] = task, world
    raw["train"].update(train)
    return raw


def read_log(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


def test_tiny_stage_one_run_trains_validates_and_evaluates(world, tmp_path, monkeypatch, capsys):
    from rewardtune.train import train
    monkeypatch.setattr(vq, "USAGE_DECAY", FAST_DECAY)
    run = str(tmp_path / "codec")
    metrics = train(from_dict(tiny_config(world)), run)
    assert {"pq", "pq_things", "code_usage", "code_perplexity"} <= set(metrics)
    assert 0 < metrics["code_usage"] <= 1 and 1 <= metrics["code_perplexity"] <= 16
    log = read_log(run)
    train_logs = [r for r in log if "train/loss" in r]
    assert train_logs[-1]["train/recon_loss"] < train_logs[0]["train/recon_loss"]
    assert all(k in train_logs[0] for k in ("train/vq_loss", "train/semantic_loss", "train/slot_loss",
                                            "train/code_usage"))
    assert sum(r.get("train/codes_restarted", 0) for r in log) > 0  # dead codes were restarted
    vals = [r for r in log if "val/pq" in r]
    assert [r["step"] for r in vals] == [6, 12] and all("val/code_perplexity" in r for r in vals)
    with open(os.path.join(run, "eval", "val", "metrics.json")) as f:
        written = json.load(f)
    assert written["pq"] == pytest.approx(metrics["pq"]) and written["num_images"] == 8
    assert os.path.exists(os.path.join(run, "eval", "val", "panoptic.json"))
    # the checkpoint rebuilds the code model by itself: CodeModel(**code_arch) + model.pt
    saved = checkpoint.load(checkpoint.find(run), optimizer_state=False)
    model = CodeModel(**saved["state"]["code_arch"])
    model.load_state_dict(saved["model"])
    assert saved["state"]["code_arch"]["grid"] == 4 and model.codebook_size == 16
    # `rewardtune eval` scores the reconstructions again, the same; `predict` refuses a stage I run in one line
    capsys.readouterr()
    assert cli.main(["eval", run]) == 0
    assert json.loads(capsys.readouterr().out)["pq"] == pytest.approx(metrics["pq"])
    image = os.path.join(world, "images", "val", sorted(os.listdir(os.path.join(world, "images", "val")))[0])
    assert cli.main(["predict", run, image]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage I run" in err[0]


def test_tiny_colorization_stage_one_run(world, tmp_path):
    from rewardtune.train import train
    raw = tiny_config(world, "colorization", steps=4, eval_every=4, monitor="psnr")
    raw["task_options"] = {"grid": 4, "palette_size": 8}
    metrics = train(from_dict(raw), str(tmp_path / "color"))
    assert {"psnr", "ssim", "colorfulness", "code_usage"} <= set(metrics)
    assert os.path.exists(os.path.join(tmp_path, "color", "eval", "val", "metrics.json"))


# ---- config errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"task": "detection", "task_options": {}}, "config key 'train.stage': 'codec' needs a task with a dense target (Task.dense); "
                            "task 'detection' has none"),
    ({"code": {"grid": 3}}, "config key 'code.grid': data.image_size 32 must be code.grid (3) times a power of two"),
    ({"code": {"code_dropout": 1.0}}, "config key 'code.code_dropout': must be in [0, 1)"),
    ({"train": {"eval_reward_samples": 2}}, "config key 'train.eval_reward_samples': stage codec draws no samples"),
])
def test_stage_codec_config_errors_are_one_line_exit_2(world, tmp_path, capsys, change, message):
    raw = tiny_config(world)
    for key, value in change.items():
        if isinstance(value, dict) and value:
            raw[key].update(value)
        else:
            raw[key] = value
    path = str(tmp_path / "config.json")
    with open(path, "w") as f:
        json.dump(raw, f)
    run = str(tmp_path / "run")
    assert cli.main(["pretrain", path, "--out", run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rewardtune: error: ") and message in err[0], err
    assert not os.path.exists(run)  # nothing written


# ---- resume after SIGKILL -----------------------------------------------------------------------------------
KILLS = [({checkpoint.KILL_ENV: "4:done"}, "step-4"),  # right after a checkpoint
         ({MID_STEP_ENV: "3"}, "step-6"),  # in the middle of step 8 (resumed at 4; step 6 validated and saved)
         ({checkpoint.KILL_ENV: "8:files"}, "step-6"),  # half-written temporary folder
         ({checkpoint.KILL_ENV: "12:renamed"}, "step-8")]  # final folder in place, no pointer moved


def rewardtune(*args, env=None, killed=False):
    full_env = {k: v for k, v in os.environ.items() if k not in (MID_STEP_ENV, checkpoint.KILL_ENV)}
    full_env.update({"PYTHONPATH": os.pathsep.join([HERE, ROOT]), "OMP_NUM_THREADS": "1", **(env or {})})
    proc = subprocess.run([sys.executable, "-m", "rewardtune", *args], env=full_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == (-signal.SIGKILL if killed else 0), f"{args} {env}: exit {proc.returncode}\n" \
                                                                   f"{proc.stderr[-3000:]}"


def test_killed_stage_one_run_resumes_bit_identical(world, tmp_path):
    config = str(tmp_path / "config.json")
    with open(config, "w") as f:
        json.dump(tiny_config(world, "test_codec_stage"), f)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    rewardtune("pretrain", config, "--out", full)
    for env, latest in KILLS:
        rewardtune("pretrain", config, "--out", killed, env=env, killed=True)
        assert checkpoint.read_pointer(os.path.join(killed, "checkpoints"), "latest") == latest, env
    rewardtune("pretrain", config, "--out", killed)
    a = torch.load(os.path.join(checkpoint.find(full), "model.pt"), weights_only=True)
    b = torch.load(os.path.join(checkpoint.find(killed), "model.pt"), weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(killed) == read_log(full)
    assert sum(r.get("train/codes_restarted", 0) for r in read_log(full)) > 0  # restarts were replayed too
    with open(os.path.join(full, "eval", "val", "metrics.json")) as f, \
            open(os.path.join(killed, "eval", "val", "metrics.json")) as g:
        assert json.load(f) == json.load(g)


def test_panoptic_outputs_drop_stray_segments_and_the_loss_weighs_thing_pixels_more():
    from rewardtune.tasks.panoptic.dense import MIN_AREA_FRACTION, THING_WEIGHT
    dense = PanopticDense(CATEGORIES, max_instances=2, image_size=64)
    ids = np.zeros((64, 64), np.int32)
    ids[:, :32], ids[:, 32:] = 1, 2  # two stuff-sized segments
    thing = 1 + len(dense.pixels.stuff)  # the first thing class's first slot
    ids[10:20, 10:20] = thing  # 100 px: kept
    ids[40, 40:43] = thing + 1  # 3 px (under 16 = 64 * 64 / 256): dropped to void
    kept = dense.drop_small(ids)
    assert MIN_AREA_FRACTION * 64 * 64 == 16
    assert (kept[40, 40:43] == 0).all() and (kept[10:20, 10:20] == thing).all() and (kept[:, :5] == 1).all()
    # one pixel's semantic class wrong: a thing pixel costs THING_WEIGHT times a stuff pixel
    target = hand_target()
    small = PanopticDense(CATEGORIES, max_instances=2, image_size=8)
    sem, slot = small.labels([target])
    costs = []
    for y, x in (tuple(np.argwhere(slot[0].numpy() > 0)[0]), tuple(np.argwhere(slot[0].numpy() == 0)[0])):
        logits = perfect_logits(small, [target])
        logits[0, :small.n_sem, y, x] = logits[0, :small.n_sem, y, x].roll(1, 0)
        costs.append(small.loss(logits, [target])[0].item())
    assert costs[0] == pytest.approx(THING_WEIGHT * costs[1], rel=1e-3)
