"""Every task through the one loop: a few MLE and reward steps on a tiny model, eval, then `score`
on the written predictions gives the numbers eval wrote."""
import json
import os

import pytest
import torch

from rewardtune import checkpoint
from rewardtune.cli import main
from rewardtune.config import apply_overrides, from_dict
from rewardtune.data.shapes import generate_shapes
from rewardtune.recipes import recipe_dict
from rewardtune.train import train

TASKS = ["detection", "captioning", "colorization", "panoptic"]
TINY = ["data.image_size=32", "model.width=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2",
        "train.batch_size=4", "train.eval_every=3", "train.checkpoint_every=3", "train.log_every=1",
        "train.warmup_steps=1", "train.eval_images=8", "train.threads=0"]
OPTIONS = {"colorization": ['task_options={"palette_size": 16, "grid": 4}'],
           "panoptic": ['task_options={"grid": 4, "max_instances": 4}'],
           "detection": ['task_options={"bins": 32, "max_boxes": 6}'], "captioning": []}


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(str(root), num_train=16, num_val=8, num_test=2, image_size=32, seed=1, level="medium")
    return str(root)


def config(task, stage, root, *extra):
    raw = recipe_dict(f"{task}_demo_{'mle' if stage == 'mle' else 'tune'}")
    return from_dict(apply_overrides(raw, [f"data.root={json.dumps(root)}", *TINY, *OPTIONS[task], *extra]))


def weights(run):
    return torch.load(os.path.join(checkpoint.find(run), "model.pt"), weights_only=True)


def losses(run, key):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


@pytest.mark.parametrize("task", TASKS)
def test_mle_and_reward_steps_then_score(task, world, tmp_path, capsys):
    mle, tuned = str(tmp_path / "mle"), str(tmp_path / "tuned")
    metrics = train(config(task, "mle", world, "train.steps=6", "train.lr=3e-3"), mle)
    mle_losses = losses(mle, "train/loss")
    assert len(mle_losses) == 6 and mle_losses[-1] < mle_losses[0]
    train(config(task, "reward", world, "train.steps=3", "train.num_samples=3", "train.lr=1e-3"), tuned,
          init_dir=mle)
    before, after = weights(mle), weights(tuned)
    assert any(not torch.equal(before[k], after[k]) for k in before), "reward steps left the parameters unchanged"
    assert len(losses(tuned, "train/reward")) == 3
    with open(os.path.join(mle, "eval", "val", "metrics.json")) as f:
        written = json.load(f)
    assert all(abs(written[k] - v) < 1e-9 for k, v in metrics.items())
    args = {"detection": ["--pred", f"{mle}/eval/val/detections.json", "--gt", f"{world}/annotations/instances_val.json"],
            "captioning": ["--pred", f"{mle}/eval/val/captions.json", "--gt", f"{world}/annotations/captions_val.json"],
            "colorization": ["--pred", f"{mle}/eval/val/images", "--gt", f"{world}/images/val"],
            "panoptic": ["--pred-json", f"{mle}/eval/val/panoptic.json", "--pred-dir", f"{mle}/eval/val/panoptic",
                         "--gt-json", f"{world}/annotations/panoptic_val.json",
                         "--gt-dir", f"{world}/annotations/panoptic_val"]}[task]
    capsys.readouterr()
    assert main(["score", task, *args]) == 0
    scored = json.loads(capsys.readouterr().out)
    for key, value in metrics.items():
        if key in scored:
            assert scored[key] == pytest.approx(value, abs=1e-6), key


def test_detection_analyze_prints_saves_and_reports_the_headroom(world, tmp_path, capsys):
    from rewardtune.analysis import analyze_run
    from rewardtune.report.html import write_report
    mle = str(tmp_path / "mle")
    train(config("detection", "mle", world, "train.steps=3", "train.lr=3e-3"), mle)
    capsys.readouterr()
    summary = analyze_run(mle, samples=5, images=3, out_dir=str(tmp_path / "analysis"), seed=1, batch_size=4)
    headroom = summary["headroom"]["mle"]
    assert {"greedy_map", "greedy_map_by_token_prob", "greedy_map_by_oracle_iou", "pooled_map_1", "pooled_map_4",
            "pooled_map_5", "hedged_map"} <= set(headroom)
    assert all(0 <= v <= 1 for k, v in headroom.items() if k != "greedy_score")
    assert "headroom (mle): greedy_map" in capsys.readouterr().out
    with open(tmp_path / "analysis" / "summary.json") as f:
        assert json.load(f)["headroom"] == summary["headroom"]
    os.replace(tmp_path / "analysis", os.path.join(mle, "analysis"))
    with open(write_report([mle], str(tmp_path / "report.html"), images=2)) as f:
        page = f.read()
    assert "Headroom before tuning" in page and "<th>pooled_map_5</th>" in page


def test_detection_reward_steps_with_per_box_credit(world, tmp_path):
    from rewardtune.errors import ConfigError
    mle, tuned = str(tmp_path / "mle"), str(tmp_path / "tuned")
    train(config("detection", "mle", world, "train.steps=2", "train.lr=3e-3"), mle, evaluate_at_end=False)
    train(config("detection", "reward", world, "train.steps=2", "train.num_samples=3", "train.reward=map",
                 "train.credit=token"), tuned, init_dir=mle, evaluate_at_end=False)
    before, after = weights(mle), weights(tuned)
    assert any(not torch.equal(before[k], after[k]) for k in before), "token-credit steps left the parameters unchanged"
    assert len(losses(tuned, "train/pg_loss")) == 2 and not losses(tuned, "train/reward_per_item")
    with pytest.raises(ConfigError, match="reward 'recall' does not"):  # recall does not split over boxes
        train(config("detection", "reward", world, "train.steps=1", "train.num_samples=3", "train.reward=recall",
                     "train.credit=token"), str(tmp_path / "recall"), init_dir=mle, evaluate_at_end=False)


def box_count_reward(outputs, targets):
    """A user reward that pays for every box: a hedge proposal has more than its own sample."""
    return torch.tensor([float(len(o["classes"])) for o in outputs]), {}


def test_detection_reward_steps_with_hedge_proposals(world, tmp_path):
    from rewardtune.errors import ConfigError
    mle = str(tmp_path / "mle")
    train(config("detection", "mle", world, "train.steps=2", "train.lr=3e-3"), mle, evaluate_at_end=False)
    runs = {}
    for weight in ("0", "1"):
        runs[weight] = str(tmp_path / f"w{weight}")
        train(config("detection", "reward", world, "train.steps=2", "train.num_samples=3", "train.lr=1e-3",
                     "train.reward=test_tasks_smoke:box_count_reward", f"train.proposal_weight={weight}",
                     "train.log_every=1"), runs[weight], init_dir=mle, evaluate_at_end=False)
    fractions = losses(runs["1"], "train/proposal_frac")
    assert len(fractions) == 2 and all(0 < f <= 1 for f in fractions)
    assert all(f > 0 for f in losses(runs["1"], "train/proposal_better_frac"))  # each hedge adds a box
    assert len(losses(runs["1"], "train/proposal_loss")) == 2 and not losses(runs["0"], "train/proposal_loss")
    # the first step draws the same samples (same seed, same start): the runs differ by the self-imitation term
    assert losses(runs["1"], "train/reward")[0] == losses(runs["0"], "train/reward")[0]
    a, b = weights(runs["0"]), weights(runs["1"])
    assert any(not torch.equal(a[k], b[k]) for k in a), "the proposals' loss left the parameters unchanged"
    # the hedge token (task_options.hedge_token): a proposal hedges every box in place; decoded with the sample's
    # log-probs, each hedge is a second box, so a proposal has more boxes than its sample under this reward
    hedged = str(tmp_path / "hedge")
    train(config("detection", "reward", world, "train.steps=2", "train.num_samples=3", "train.lr=1e-3",
                 "train.reward=test_tasks_smoke:box_count_reward", "train.proposal_weight=1", "train.log_every=1",
                 "task_options.hedge_token=true", "task_options.aux_weight=0", "train.kl_weight=1",
                 "train.grad_accum_steps=2"), hedged, init_dir=mle, evaluate_at_end=False)
    assert len(losses(hedged, "train/kl")) == 2  # the KL term leaves the hedge decisions out (codec.kl_exempt)
    assert all(f > 0.5 for f in losses(hedged, "train/proposal_better_frac"))
    assert all(p > r for p, r in zip(losses(hedged, "train/proposal_reward"), losses(hedged, "train/reward")))
    # the samples' hedges count too: the same samples read as plain boxes (w0, no hedge token) have fewer
    assert losses(hedged, "train/reward")[0] > losses(runs["0"], "train/reward")[0]
    with pytest.raises(ConfigError, match="'train.proposal_weight': 0.5 needs a task that proposes"):
        train(config("captioning", "reward", world, "train.steps=1", "train.num_samples=3", "train.proposal_weight=0.5"),
              str(tmp_path / "cap"), evaluate_at_end=False)
