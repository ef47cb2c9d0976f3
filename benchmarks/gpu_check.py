"""GPU check: MLE step MFU in bf16, the sampler's KV-cache speed-up, and a short DDP tuning run.

    python benchmarks/gpu_check.py [--quick]

On a machine without CUDA it says so in one line and exits 0. On CUDA it prints a table:

1. MLE step MFU, bf16 (train.precision=bf16's autocast, fused AdamW), of a ViT-B/16-sized encoder (12 x 768,
   384 px: 576 patches) and a 6-layer decoder writing 100 tokens. Model FLOPs of a training step =
   3 x forward (backward = 2 x forward), forward = 2 x (each weight matrix's parameters x the tokens it
   sees: encoder and cross-attention keys/values the 576 patches, the rest of the decoder the 100 target
   tokens) + attention (4 x queries x keys x width a layer: QK^T and AV; the causal self-attention counted
   in full, as PaLM's MFU does). Embedding lookups, norms and softmaxes not counted. MFU = those FLOPs /
   step time / the chip's dense bf16 peak (from its spec sheet when the name is known; the measured
   8192^3 bf16 matmul rate is printed too, with MFU against it).
2. Sampler: 256 sequences x 100 tokens, bf16 autocast, KV cache vs recomputing the whole prefix at every
   position (`generate(use_cache=False)`).
3. DDP: `torchrun --nproc-per-node <all visible GPUs> -m rewardtune pretrain` then `tune` on a small shapes
   world (detection demo recipes, bf16, 2 micro-batches), a few steps each: it must finish; the tuning
   steps' mean time is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from rewardtune.config import TrainConfig
from rewardtune.losses import mle_loss
from rewardtune.model.encdec import EncoderDecoder
from rewardtune.train import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# dense bf16 peak FLOP/s from the vendors' spec sheets (no sparsity), by a substring of the device name
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12}
MODEL = dict(stem="patch", patch_size=16, width=768, encoder_depth=12, decoder_depth=6, heads=12)
IMAGE, VOCAB, TOKENS, BATCH = 384, 1000, 100, 32


def forward_flops(model: EncoderDecoder, image_size: int, tokens: int) -> int:
    """Model FLOPs of one teacher-forced forward pass of one image with `tokens` target tokens (see above)."""
    enc, dec = model.encoder, model.decoder
    patches, width = enc.pos.shape[0], dec.head.in_features
    stem, size = 0, image_size
    for conv in (m for m in enc.stem.modules() if isinstance(m, torch.nn.Conv2d)):  # each at its output size
        size = (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        stem += conv.weight.numel() * size * size
    on_patches = sum(m.weight.numel() for m in enc.blocks.modules() if isinstance(m, torch.nn.Linear))
    on_patches += sum(b.kv_cross.weight.numel() for b in dec.blocks)  # cross-attention keys and values
    on_tokens = sum(m.weight.numel() for m in dec.modules() if isinstance(m, torch.nn.Linear)) \
        - sum(b.kv_cross.weight.numel() for b in dec.blocks)
    attention = 4 * width * (len(enc.blocks) * patches * patches
                             + len(dec.blocks) * (tokens * tokens + tokens * patches))
    return 2 * (stem + on_patches * patches + on_tokens * tokens) + attention


def cuda_time(fn, repeats: int) -> float:
    """Median seconds of fn() on the GPU (synchronised), after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def matmul_rate(n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * n ** 3 / cuda_time(lambda: a @ b, 10)


def spec_peak(name: str):
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def mle_mfu(repeats: int) -> tuple[float, float, int]:
    """(seconds per bf16 MLE step, model FLOPs per step, parameters)."""
    torch.manual_seed(0)
    model = EncoderDecoder(IMAGE, VOCAB, TOKENS, VOCAB - 1, **MODEL).cuda().train()
    opt = make_optimizer(model, TrainConfig(lr=1e-4))[0]
    images = torch.rand(BATCH, 3, IMAGE, IMAGE, device="cuda")
    tokens = torch.randint(0, VOCAB - 1, (BATCH, TOKENS), device="cuda")
    lengths = torch.full((BATCH,), TOKENS, device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step_lp = model(images, tokens)
        mle_loss(step_lp, tokens, lengths).backward()
        opt.step()

    seconds = cuda_time(step, repeats)
    return seconds, 3 * BATCH * forward_flops(model, IMAGE, TOKENS), sum(p.numel() for p in model.parameters())


def sampler_speedup(repeats: int) -> tuple[float, float]:
    """(cached, recomputed) seconds to sample 256 sequences of 100 tokens (no early end) in bf16."""
    torch.manual_seed(0)
    grammar = torch.ones(TOKENS, VOCAB, dtype=torch.bool)
    grammar[:-1, VOCAB - 1] = False  # every sequence runs the full 100 tokens
    grammar[-1] = False
    grammar[-1, VOCAB - 1] = True
    model = EncoderDecoder(IMAGE, VOCAB, TOKENS, VOCAB - 1, grammar=grammar, **MODEL).cuda().eval()
    images = torch.rand(32, 3, IMAGE, IMAGE, device="cuda")

    def sample(cache: bool):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model.generate(images, 8, use_cache=cache, generator=torch.Generator("cuda").manual_seed(0))
    return cuda_time(lambda: sample(True), repeats), cuda_time(lambda: sample(False), 1)


def ddp_tuning(gpus: int, steps: int) -> float:
    """Pretrain then tune the detection demo on a small shapes world under torchrun on `gpus` GPUs;
    the tuning steps' mean seconds (from metrics.jsonl)."""
    from rewardtune.data.shapes import generate_shapes
    with tempfile.TemporaryDirectory() as tmp:
        generate_shapes(os.path.join(tmp, "world"), num_train=64, num_val=16, num_test=2, image_size=64, seed=0)
        common = ["--set", f"data.root={os.path.join(tmp, 'world')}", "--set", "train.precision=bf16",
                  "--set", "train.grad_accum_steps=2", "--set", f"train.batch_size={4 * gpus}",
                  "--set", f"train.steps={steps}", "--set", f"train.eval_every={steps}", "--set", "train.log_every=1",
                  "--set", f"train.checkpoint_every={steps}", "--set", "train.eval_images=16"]
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                  "-m", "rewardtune"]
        mle, tuned = os.path.join(tmp, "mle"), os.path.join(tmp, "tuned")
        for args in (["pretrain", "detection_demo_mle", "--out", mle],
                     ["tune", "detection_demo_tune", "--init", mle, "--out", tuned, "--set", "train.num_samples=4"]):
            proc = subprocess.run(launch + args + common, cwd=ROOT, capture_output=True, text=True, timeout=900)
            if proc.returncode:
                raise SystemExit(f"gpu_check: DDP {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(os.path.join(tuned, "metrics.jsonl")) as f:
            times = [r["time"] for r in map(json.loads, f) if "train/loss" in r]
    return (times[-1] - times[0]) / max(1, len(times) - 1)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer repeats and tuning steps")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible to torch {torch.__version__}; nothing to measure (exit 0)")
        return 0
    repeats, steps = (3, 3) if args.quick else (10, 6)
    name, gpus = torch.cuda.get_device_name(0), torch.cuda.device_count()
    rate, peak = matmul_rate(), spec_peak(name)
    print(f"{name} x {gpus}, torch {torch.__version__}, bf16 matmul 8192^3: {rate / 1e12:.0f} TFLOP/s"
          + (f", spec peak {peak / 1e12:.0f} TFLOP/s" if peak else ", spec peak unknown"))
    seconds, flops, params = mle_mfu(repeats)
    achieved = flops / seconds
    print(f"MLE step bf16 ({params / 1e6:.0f}M params, batch {BATCH}, {IMAGE} px, {TOKENS} tokens): "
          f"{seconds * 1e3:.1f} ms, {achieved / 1e12:.1f} TFLOP/s, MFU "
          + (f"{achieved / peak:.1%} of spec, " if peak else "") + f"{achieved / rate:.1%} of measured matmul")
    cached, recomputed = sampler_speedup(repeats)
    print(f"sampler 256 x {TOKENS} tokens bf16: KV cache {cached:.2f} s, recompute {recomputed:.2f} s, "
          f"speed-up {recomputed / cached:.1f}x")
    print(f"DDP tuning over {gpus} GPU(s) (bf16, 2 micro-batches): {ddp_tuning(gpus, steps):.3f} s per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
