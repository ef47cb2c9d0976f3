"""The benchmark script runs its whole chain (tiny) and prints its table, with each task's extra lines."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = {"captioning": "cider", "colorization": "psnr", "panoptic": "pq"}
EXPECTED = {
    "captioning": ("0 mle", "0 control", "0 tune", "cider: tune - MLE", "MLE val/cider curve", "no end token"),
    # two branches from MLE, MLE judged on PSNR, and the gray | MLE | tuned | truth grid
    "colorization": ("0 tune_fidelity", "mean tune_fidelity", "psnr: tune_fidelity - MLE", "MLE val/psnr curve",
                     "grid (gray input | MLE | tune | tune_fidelity | truth)"),
    "panoptic": ("0 tune", "pq: tune - MLE", "pq_stuff: tune - MLE", "maps of 65 tokens: sample"),
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_reward_benchmark_quick_prints_the_table(tmp_path, task):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reward_benchmark.py"), task,
                           "--quick", "--seeds", "0", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in EXPECTED[task]:
        assert row in proc.stdout, (row, proc.stdout[-3000:])
    assert os.path.exists(tmp_path / "results.json")
    # MLE goes on from its best checkpoint at its final lr, with patience, to its plateau there (--quick's 4 steps
    # are all run: patience 4 cannot stop them)
    assert "seed 0 MLE ran all its steps; from its best checkpoint it went on at lr" in proc.stdout
    import json
    with open(tmp_path / "results.json") as f:
        result = json.load(f)[0]
    with open(tmp_path / "seed0" / "mle_more" / "config.json") as f:
        more = json.load(f)["train"]
    assert more["schedule"] == "constant" and more["patience"] == 4 and result["mle_more"]["lr"] == more["lr"]
    with open(tmp_path / "seed0" / "control" / "config.json") as f:
        assert json.load(f)["train"]["lr"] == more["lr"]
    assert len(result["mle_curve"]) == 2 and len(result["mle_more"]["curve"]) == 2  # each run's val points
    # the world's folder names its level and size: a run asking for another world gets its own
    assert os.path.samefile(result["data"], tmp_path / "data-seed0-medium-64x16")
    first = COLUMNS[task]  # the MLE row is the plateau run's written files, scored
    with open(tmp_path / "seed0" / result["plateau"] / "eval" / "val" / "metrics.json") as f:
        assert result["metrics"]["mle"][first] == pytest.approx(json.load(f)[first], abs=1e-6)
    if task == "colorization":
        from PIL import Image
        grid = Image.open(tmp_path / "seed0" / "grid.png")
        assert grid.size == (5 * 68 * 2, 8 * 68 * 2)  # 8 val images x 5 columns of 64 px + 2 px margins, x2


def test_learned_codec_benchmark_runs_stage_one_then_the_chain_on_its_code(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reward_benchmark.py"), "panoptic",
                           "--quick", "--codec", "learned", "--seeds", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the side-by-side table has a row for stage I (the code's ceiling) and one per later stage, with wall times
    for row in ("codec          learned", "mle            learned", "tune           learned",
                "learned tune: reward step sampling", "pq: tune - MLE"):
        assert row in proc.stdout, (row, proc.stdout[-3000:])
    import json
    with open(tmp_path / "results_learned.json") as f:
        result = json.load(f)[0]
    assert result["codec"] == "learned" and set(result["times"]) >= {"codec", "mle", "tune"}
    with open(tmp_path / "learned" / "seed0" / "tune" / "config.json") as f:
        tune = json.load(f)
    code_run = str(tmp_path / "learned" / "seed0" / "codec")
    assert tune["task_options"]["codec"] == "learned" and os.path.samefile(tune["task_options"]["code_run"], code_run)
    assert tune["train"]["credit"] == "local"  # the learned code's tuning recipe: per-cell credit
    with open(tmp_path / "learned" / "seed0" / "codec" / "config.json") as f:
        assert json.load(f)["data"]["max_train_images"] == 8000  # stage I: the first 8000; stage II: them all
    assert tune["data"]["max_train_images"] == 0
    assert not os.path.exists(tmp_path / "results.json")  # the grid benchmark's file is not touched


def test_detection_benchmark_with_the_hedge_token_tunes_one_stage_from_mle(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reward_benchmark.py"), "detection",
                           "--quick", "--hedge", "--level", "faint", "--seeds", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("shapes world 'faint'", "0 tune_hedge", "map: tune_hedge - MLE", "seed 0 tune_hedge: reward step",
                "seed 0 headroom (mle): greedy_map", "hedged_map", "seed 0 headroom (tuned): greedy_map"):
        assert row in proc.stdout, (row, proc.stdout[-3000:])
    assert "tune_recall" not in proc.stdout
    import json
    with open(tmp_path / "seed0" / "tune_hedge" / "config.json") as f:
        assert json.load(f)["task_options"]["hedge_token"] is True
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reward_benchmark.py"), "captioning",
                          "--quick", "--hedge", "--out", str(tmp_path / "cap")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--hedge: detection only" in bad.stderr


def test_speed_benchmark_counts_attention_flops():
    """MFU's numerator: the CPU attention kernels count as the matmuls of plain attention (the stock
    FlopCounterMode counts them as 0), backward twice forward."""
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import speed
    B, H, T, S, D = 2, 3, 5, 7, 4
    q = torch.randn(B, H, T, D, requires_grad=True)
    k, v = torch.randn(B, H, S, D, requires_grad=True), torch.randn(B, H, S, D, requires_grad=True)
    forward = 2 * (2 * B * H * T * S * D)  # QK^T and AV
    assert speed.count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    assert speed.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == 3 * forward
    x, w = torch.randn(6, 8), torch.randn(8, 9)
    assert speed.count_flops(lambda: x @ w) == 2 * 6 * 8 * 9


def test_confusable_pairs_benchmark_prints_a_row_per_pair():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "confusable_pairs.py"),
                           "--per-class", "40", "--epochs", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "best possible accuracy 0.750" in proc.stdout
    for pair in ("| circle / hexagon | 0.", "| square / diamond | 0."):
        assert pair in proc.stdout, proc.stdout


def test_gpu_check_exits_0_on_a_machine_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()] and "no CUDA device" in proc.stdout


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_gpu_check_counts_the_model_flops_torch_counts(stem):
    """gpu_check's MFU numerator (2 x parameters x the tokens each weight sees, plus attention) equals the
    forward FLOPs torch's counter finds in the model's matmuls, convolutions and attention."""
    import torch
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_check
    import speed
    from rewardtune.model.encdec import EncoderDecoder
    model = EncoderDecoder(32, 50, 12, 49, stem=stem, patch_size=8, width=32, encoder_depth=2, decoder_depth=3,
                           heads=2)
    images, tokens = torch.rand(1, 3, 32, 32), torch.randint(0, 49, (1, 12))
    with torch.no_grad():
        counted = speed.count_flops(lambda: model(images, tokens))
    assert gpu_check.forward_flops(model, 32, 12) == counted


def test_detection_scores_benchmark_ranks_by_the_verifier_and_hedges_every_box(tmp_path):
    """detection_scores.py on a tiny run: the table, and the verifier's mAP re-read from its written file; with
    --hedge-all every box is followed by its copy with another class."""
    import json

    from rewardtune.config import apply_overrides, from_dict
    from rewardtune.data.shapes import generate_shapes
    from rewardtune.recipes import recipe_dict
    from rewardtune.train import train
    root = str(tmp_path / "data")
    generate_shapes(root, num_train=16, num_val=8, num_test=2, image_size=32, seed=2, level="faint")
    tiny = ["data.image_size=32", "model.width=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2",
            "train.batch_size=8", "train.eval_every=4", "train.checkpoint_every=4", "train.eval_images=8",
            "train.threads=0", "train.steps=4", "train.lr=3e-3", 'task_options={"bins": 32, "max_boxes": 6}']
    run = str(tmp_path / "run")
    train(from_dict(apply_overrides(recipe_dict("detection_demo_mle"), [f"data.root={json.dumps(root)}", *tiny])), run)
    counts = {}
    for hedged in (False, True):
        out = tmp_path / f"out{int(hedged)}"
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "detection_scores.py"), run,
                               "--score", "verifier", "--images", "8", "--samples", "1", "--out", str(out)]
                              + ["--hedge-all"] * hedged, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "mAP verifier" in proc.stdout and "gap closed verifier" in proc.stdout
        row = json.loads((out / "scores.json").read_text())[0]
        assert row["hedge_all"] is hedged
        assert row["map_fitted_from_file"] == pytest.approx(row["map_by_verifier"], abs=1e-9)
        detections = json.loads((out / "run" / "detections.json").read_text())
        counts[hedged] = len(detections)
    assert counts[False] > 0 and counts[True] == 2 * counts[False]
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "detection_scores.py"), run,
                          "--hedge-all", "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--hedge-all: with --score verifier" in bad.stderr


def test_colorization_saturation_finds_the_scale_that_undoes_a_washed_out_model(tmp_path):
    """A 'model' whose images are the truth with half its chroma: saturating them by 2 brings them back to the
    truth (PSNR up, colourfulness x2), and the table says x1.5 is first reached before k = 2; a missing image
    ends with one line naming it and exit 2."""
    import numpy as np
    from PIL import Image
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import colorization_saturation as sat
    rng = np.random.default_rng(0)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for i in range(4):  # blocks of moderate colours (no clipping at k = 2)
        block = rng.integers(90, 170, size=(4, 4, 3)).astype(np.uint8)
        truth = np.kron(block, np.ones((8, 8, 1), np.uint8))
        Image.fromarray(truth).save(gt / f"{i}.png")
        Image.fromarray(sat.saturate(truth, 0.5)).save(pred / f"{i}.png")
    truths = [np.asarray(Image.open(gt / f"{i}.png")) for i in range(4)]
    preds = [np.asarray(Image.open(pred / f"{i}.png")) for i in range(4)]
    rows = sat.frontier(preds, truths, (1.0, 2.0))
    assert rows[1]["psnr"] > rows[0]["psnr"] + 10 and rows[1]["psnr"] > 35
    assert rows[1]["colorfulness"] == pytest.approx(2 * rows[0]["colorfulness"], rel=0.1)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "colorization_saturation.py"),
                           "--gt-dir", str(gt), "--pred-dir", str(pred), "--scales", "1.25", "1.5", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model     2.00" in proc.stdout and "x1.5 the model's colourfulness" in proc.stdout
    assert "first reached at k = 1.50" in proc.stdout, proc.stdout
    os.remove(pred / "3.png")
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "colorization_saturation.py"),
                          "--gt-dir", str(gt), "--pred-dir", str(pred)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "no image 3" in bad.stderr
