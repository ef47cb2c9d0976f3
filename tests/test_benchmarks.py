"""The benchmark script runs its whole chain (tiny) and prints its table."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reward_benchmark_quick_prints_the_table(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reward_benchmark.py"), "captioning",
                           "--quick", "--seeds", "0", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for row in ("0 mle", "0 control", "0 tune", "cider: tuned - MLE", "MLE val/cider curve", "no end token"):
        assert row in out, row
    assert os.path.exists(tmp_path / "results.json")
