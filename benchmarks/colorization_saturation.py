"""What a colourfulness target costs in fidelity: images with their chroma scaled, scored against the truth.

    .venv/bin/python benchmarks/colorization_saturation.py --gt-dir DATA/images/val
    .venv/bin/python benchmarks/colorization_saturation.py --gt-dir DATA/images/val --pred-dir RUN/eval/val/images

Each image keeps its CIELAB lightness and has its a, b channels multiplied by k (then clipped to sRGB):
the simplest way to be more colourful. For the truth itself (and, with --pred-dir, for a model's written
images) the table gives colourfulness, PSNR and SSIM against the truth at each k, and the line after it
the smallest k that reaches `--target` x the model's colourfulness (the truth's without --pred-dir) with the
PSNR it costs. It is a reference, not a bound: a tuned model may saturate only where it is too pale, and pay
less; but when the truth itself, saturated to the target, is already far from the truth, a target that far
above the truth's colourfulness costs fidelity whichever way it is reached.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

from rewardtune.errors import DataError
from rewardtune.tasks.colorization.color import lab_to_rgb, rgb_to_lab
from rewardtune.tasks.colorization.data import list_images
from rewardtune.tasks.colorization.metrics import image_metrics

SCALES = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0)


def saturate(rgb: np.ndarray, k: float) -> np.ndarray:
    """uint8 RGB with CIELAB a, b times k (lightness kept), clipped back to uint8 sRGB."""
    lab = np.array(rgb_to_lab(rgb.astype(np.float32) / 255.0))
    lab[..., 1:] *= k
    return np.clip(np.array(lab_to_rgb(lab)) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def load(folder: str, names: list[str]) -> list[np.ndarray]:
    found = list_images(folder)
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{folder}: no image {missing[0]} ({len(missing)} of the truth's {len(names)} missing)")
    return [np.asarray(Image.open(found[n]).convert("RGB")) for n in names]


def frontier(images: list[np.ndarray], truths: list[np.ndarray], scales=SCALES) -> list[dict]:
    """[{k, colorfulness, psnr, ssim}] of `images` saturated by each k, scored against `truths`."""
    rows = []
    for k in scales:
        m = image_metrics([saturate(im, k) for im in images], truths)
        rows.append({"k": k, "colorfulness": m["colorfulness"], "psnr": m["psnr"], "ssim": m["ssim"]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gt-dir", required=True, help="the original colour images (e.g. DATA/images/val)")
    p.add_argument("--pred-dir", help="a model's written images of the same names (RUN/eval/val/images)")
    p.add_argument("--target", type=float, default=1.5, help="x the model's colourfulness to reach (default 1.5)")
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    args = p.parse_args(argv)
    try:
        names = sorted(list_images(args.gt_dir))
        truths = load(args.gt_dir, names)
        sources = {"truth": truths}
        if args.pred_dir:
            sources["model"] = load(args.pred_dir, names)
    except (DataError, OSError) as e:
        print(f"colorization_saturation: error: {e}", file=sys.stderr)
        return 2
    scales = sorted(set([1.0, *args.scales]))
    print(f"{len(names)} images of {args.gt_dir}; chroma (CIELAB a, b) x k, lightness kept\n")
    print(f"{'images':<8} {'k':>5} {'colourful':>10} {'PSNR dB':>8} {'SSIM':>6}")
    tables = {}
    for label, images in sources.items():
        tables[label] = frontier(images, truths, scales)
        for r in tables[label]:
            psnr = f"{r['psnr']:8.2f}" if r["k"] != 1.0 or label != "truth" else f"{'(same)':>8}"
            print(f"{label:<8} {r['k']:5.2f} {r['colorfulness']:10.1f} {psnr} {r['ssim']:6.3f}")
    label = "model" if args.pred_dir else "truth"
    rows = tables[label]
    base = rows[0]  # k = 1
    goal = args.target * base["colorfulness"]
    reached = [r for r in rows if r["colorfulness"] >= goal]
    if reached:
        r = reached[0]
        cost = f", PSNR {r['psnr']:.2f} dB" + (f" ({r['psnr'] - base['psnr']:+.2f} dB)" if label == "model" else
                                                 " against the truth itself")
        print(f"\nx{args.target:g} the {label}'s colourfulness ({goal:.1f}): first reached at k = {r['k']:.2f}"
              f" (colourfulness {r['colorfulness']:.1f}){cost}")
    else:
        print(f"\nx{args.target:g} the {label}'s colourfulness ({goal:.1f}): not reached by k = {rows[-1]['k']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
