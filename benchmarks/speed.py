"""Speed benchmark: KV-cache sampler vs recomputing the prefix, and the MLE step's MFU.

    .venv/bin/python benchmarks/speed.py [--threads 2] [--quick]

Prints a table. MFU = achieved FLOP/s of a full MLE training step (forward + backward + AdamW,
FLOPs counted by torch.utils.flop_counter) / this machine's fp32 matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from rewardtune.losses import mle_loss
from rewardtune.config import TrainConfig
from rewardtune.data.shapes_scene import KINDS
from rewardtune.model.encdec import EncoderDecoder
from rewardtune.recipes import recipe_dict
from rewardtune.tasks.detection.codec import DetectionCodec
from rewardtune.train import make_optimizer


def _detection_benchmark() -> tuple:
    """The detection benchmark's MLE step, read from its recipe: model, batch, and the codec's
    vocabulary and sequence length for the shapes world's classes."""
    recipe = recipe_dict("detection_bench_mle")
    opts = recipe["task_options"]
    codec = DetectionCodec(len(KINDS), opts["bins"], opts["max_boxes"])
    return recipe["data"]["image_size"], recipe["model"], codec.vocab_size, codec.max_len, recipe["train"]["batch_size"]


MODELS = {  # name: (image size, model kwargs, vocab, target tokens, batch)
    "reference 4.6M (docs/results.md#speed)": (64, dict(stem="patch", patch_size=8, width=192, encoder_depth=4,
                                              decoder_depth=4, heads=4), 1000, 100, 32),
    "detection benchmark": _detection_benchmark(),
}


def matmul_rate(n: int = 1024, repeats: int = 10, rounds: int = 5) -> float:
    """This machine's fp32 matmul rate (FLOP/s): the best of `rounds` timings of `repeats` n x n matmuls
    (the best, not the mean: it is a peak, and it moves with clock speed and other load)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 * repeats / best


# FlopCounterMode has no formula for the CPU flash-attention kernels (it counts 0 FLOPs for them), so
# they are counted here as plain attention's model FLOPs: QK^T and AV in full (causal or not), backward
# twice forward (the kernel's recomputation of QK^T not counted, as MFU does not count it).
ATEN = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    ATEN._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v),
    ATEN._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, **kwargs: 2 * sdpa_flop_count(q, k, v),
}


def count_flops(fn) -> int:
    """FLOPs of one call of fn: matmuls, convolutions and attention, forward and backward."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def mle_step_mfu(size, kwargs, vocab, T, batch, rate, repeats):
    torch.manual_seed(0)
    model = EncoderDecoder(size, vocab, T, vocab - 1, **kwargs).train()
    opt = make_optimizer(model, TrainConfig(lr=1e-4))[0]  # the optimizer training uses
    images = torch.rand(batch, 3, size, size)
    tokens = torch.randint(0, vocab - 1, (batch, T))
    lengths = torch.full((batch,), T)

    def step():
        opt.zero_grad(set_to_none=True)
        mle_loss(model(images, tokens), tokens, lengths).backward()
        opt.step()

    step()
    flops = count_flops(step)
    seconds = median_time(step, repeats)
    return sum(p.numel() for p in model.parameters()), seconds, flops / seconds / rate


def sampler_speed(size, kwargs, vocab, T, n_seq, repeats):
    torch.manual_seed(0)
    grammar = torch.ones(T, vocab, dtype=torch.bool)
    grammar[:-1, vocab - 1] = False  # no early end: every sequence runs the full T tokens
    grammar[-1] = False
    grammar[-1, vocab - 1] = True
    model = EncoderDecoder(size, vocab, T, vocab - 1, grammar=grammar, **kwargs).eval()
    images = torch.rand(n_seq // 8, 3, size, size)
    gen = torch.Generator().manual_seed(0)
    cached = median_time(lambda: model.generate(images, 8, generator=gen), repeats)
    uncached = median_time(lambda: model.generate(images, 8, generator=gen, use_cache=False), 1)
    return cached, uncached


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 5
    rate = matmul_rate()
    print(f"torch {torch.__version__}, {args.threads} threads, fp32 matmul rate {rate / 1e9:.1f} GFLOP/s\n")
    print(f"{'model':<30} {'params':>8} {'MLE step s':>10} {'MFU':>6} {'sample 256x100 cached s':>24} "
          f"{'uncached s':>11} {'speed-up':>9}")
    for name, (size, kwargs, vocab, T, batch) in MODELS.items():
        params, step_s, mfu = mle_step_mfu(size, kwargs, vocab, T, batch, rate, repeats)
        cached, uncached = sampler_speed(size, kwargs, vocab, 100, 256, repeats)
        print(f"{name:<30} {params / 1e6:7.2f}M {step_s:10.3f} {mfu:6.2f} {cached:24.2f} {uncached:11.2f} "
              f"{uncached / cached:8.1f}x")


if __name__ == "__main__":
    main()
