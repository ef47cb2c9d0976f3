"""The benchmark script runs its whole chain (tiny) and prints its table, with each task's extra lines."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    if task == "colorization":
        from PIL import Image
        grid = Image.open(tmp_path / "seed0" / "grid.png")
        assert grid.size == (5 * 68 * 2, 8 * 68 * 2)  # 8 val images x 5 columns of 64 px + 2 px margins, x2


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
