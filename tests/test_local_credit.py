"""Per-cell credit for a learned code (train.credit = "local", credit.py): where panoptic's PQ was earned
(pq_region_credit), the cells' shares, their advantages, and the loop with it."""
import json
import os

import numpy as np
import pytest
import torch

import toy_dense_task
from rewardtune import checkpoint
from rewardtune.config import from_dict
from rewardtune.credit import cell_shares, check_credit, local_advantages
from rewardtune.errors import ConfigError
from rewardtune.losses import leave_one_out_advantage
from rewardtune.tasks.base import REGION_PART, Task
from rewardtune.tasks.panoptic.pq import pq_batch, pq_region_credit
from rewardtune.train import train
from test_learned_codec import BASE, stage_one_run


def panoptic(ids, categories):
    return {"map": np.asarray(ids, np.int32), "segments": [{"id": i, "category_id": c} for i, c in categories.items()]}


def test_pq_is_credited_to_the_pixels_of_the_segments_it_matched():
    # 4 x 4 gt: a thing (category 1) on the top-left 2 x 2 block, stuff (category 2) elsewhere
    gt_ids = np.full((4, 4), 2)
    gt_ids[:2, :2] = 1
    gt = panoptic(gt_ids, {1: 1, 2: 2})
    missed = panoptic(np.full((4, 4), 7), {7: 2})  # all stuff: the thing is a false negative
    # stuff matched with IoU 12/16; categories: thing pq 0 (fn), stuff pq 0.75: image pq 0.375, all of it on the
    # stuff's 12 pixels, nothing on the thing's
    credit = pq_region_credit([missed], [gt], regions=2)
    assert pq_batch([missed], [gt])[0][0] == pytest.approx(0.375)
    assert credit[0] == pytest.approx(np.array([[0.0, 0.125], [0.125, 0.125]]))
    # both found: each category's half of the PQ on its own segment (the thing's 4 pixels weigh as the stuff's 12)
    found = panoptic(gt_ids + 5, {6: 1, 7: 2})
    assert pq_region_credit([found], [gt], regions=2)[0] == pytest.approx(np.array([[0.5, 1 / 6], [1 / 6, 1 / 6]]))


def test_regions_sum_to_each_images_pq_on_random_maps():
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for i in range(12):
        h, w = rng.integers(5, 20, size=2)
        gt_ids = rng.integers(0, 4, size=(h, w)) // 2 * 3 + 1  # segments 1 and 4 in blocks of noise
        gt_ids[: h // 2] = 9
        gt = panoptic(gt_ids, {1: 1, 4: 2, 9: 3})
        pred_ids = np.where(rng.random((h, w)) < 0.8, gt_ids, 4)
        preds.append(panoptic(pred_ids, {1: 1, 4: 2, 9: 3 if i % 2 else 1}))
        gts.append(gt)
    preds.append({"map": np.zeros((3, 3), np.int32), "segments": []})
    gts.append({"map": np.zeros((3, 3), np.int32), "segments": []})  # nothing to find: pq 1, spread evenly
    credit = pq_region_credit(preds, gts, regions=4)
    assert credit.shape == (13, 4, 4)
    assert credit.sum((1, 2)) == pytest.approx(pq_batch(preds, gts)[0])
    assert 0 < pq_batch(preds, gts)[0][:-1].mean() < 1


def test_regions_pool_into_the_cells_that_cover_them():
    regions = torch.arange(16.0).view(1, 4, 4)
    shares = cell_shares({REGION_PART: regions}, [None], 2, "pq")
    assert shares[0].tolist() == [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    with pytest.raises(ConfigError, match=r"'local' needs a reward .*\(part 'per_region'\); reward 'mine'"):
        cell_shares({"sq": torch.zeros(1)}, [None], 2, "mine")


def grid_task(grid):
    cells = np.stack([np.arange(grid * grid), np.arange(1, grid * grid + 1)], 1)
    return Task("dense", None, dict, {}, None, None, None, item_tokens=lambda output: cells, item_grid=grid)


def test_each_cell_gets_its_own_advantage_and_a_wide_radius_gives_the_sequences():
    g, n = 3, 4
    rng = np.random.default_rng(1)
    cell_values = torch.tensor(rng.random((n, g, g)), dtype=torch.float32)
    parts = {REGION_PART: cell_values}  # regions = cells
    lengths = torch.full((n,), g * g + 1)
    T = g * g + 1
    own = local_advantages(grid_task(g), [None] * n, parts, n, lengths, T, radius=0)
    expected = cell_values - (cell_values.sum(0, keepdim=True) - cell_values) / (n - 1)
    assert torch.allclose(own[:, :g * g], expected.view(n, -1), atol=1e-6)
    assert torch.all(own[:, g * g] == 0)  # the end token: nothing after it
    # radius 1: the 3 x 3 block around each cell (cut at the border)
    near = local_advantages(grid_task(g), [None] * n, parts, n, lengths, T, radius=1)
    assert near[:, 0] == pytest.approx(expected[:, :2, :2].sum((1, 2)))
    assert near[:, 4] == pytest.approx(expected.sum((1, 2)))
    # a radius as wide as the grid: every cell token gets the sequence's leave-one-out advantage (the paper's)
    wide = local_advantages(grid_task(g), [None] * n, parts, n, lengths, T, radius=g)
    sequence = leave_one_out_advantage(cell_values.sum((1, 2)).view(1, n)).view(n)
    assert torch.allclose(wide[:, :g * g], sequence[:, None].expand(n, g * g), atol=1e-6)


def test_local_credit_needs_a_grid_of_items_and_the_loo_baseline():
    train_cfg = from_dict({"task": "toy", "train": {"stage": "reward", "credit": "local"}}).train
    no_grid = Task("toy", None, dict, {}, None, None, None, item_tokens=lambda o: np.zeros((0, 2)))
    with pytest.raises(ConfigError, match="'train.credit': 'local' needs outputs whose items are the cells"):
        check_credit(no_grid, train_cfg)
    check_credit(grid_task(2), train_cfg)
    with pytest.raises(ConfigError, match="'train.credit': 'local' needs train.baseline 'loo'"):
        from_dict({"task": "toy", "train": {"stage": "reward", "credit": "local", "baseline": "greedy"}})
    with pytest.raises(ConfigError, match="'train.credit_radius': must be >= 0"):
        from_dict({"task": "toy", "train": {"credit_radius": -1}})


def run_config(code_run, **train):
    raw = json.loads(json.dumps(BASE))
    raw["task_options"] = {"codec": "learned", "code_run": code_run}
    raw["train"].update({"stage": "reward", "reward": "regions", "lr": 1e-3, "schedule": "constant",
                         "warmup_steps": 0, "num_samples": 3, "steps": 2, "eval_every": 2, "checkpoint_every": 2,
                         **train})
    return from_dict(raw)


def test_the_loop_tunes_a_learned_code_with_local_credit(tmp_path):
    code_run, _ = stage_one_run(str(tmp_path / "stage1"))
    run = str(tmp_path / "local")
    train(run_config(code_run, credit="local", credit_radius=0), run)
    assert checkpoint.find(run)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "train/loss" in line]
    assert len(rows) == 2 and not any(key.startswith("train/reward_per") for key in rows[0])  # no per-region logs
    # the step reads the reward's regions: a reward without them is refused, naming it
    with pytest.raises(ConfigError, match="reward 'accuracy' does not"):
        train(run_config(code_run, credit="local", reward="accuracy"), str(tmp_path / "no_regions"))
