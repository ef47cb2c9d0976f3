"""How confusable the misaligned world's pairs are: a small CNN told apart crops of each pair's two kinds.

    .venv/bin/python benchmarks/confusable_pairs.py [--level misaligned] [--per-class 2000] [--epochs 30]

Draws scenes of the level at even kind frequencies (long_tail=1, the same looks), crops every shape of a
CONFUSABLE kind (its visible box, squared with a pixel of margin, resized to 16x16), trains a 3-layer CNN
on 80 % of each pair's crops (equal numbers of either kind) and prints its held-out accuracy: overall,
in the shared band of looks (where no classifier beats 50 %) and outside it, beside the best possible
(1 - confusion / 2). One thread; about a minute a pair.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

from rewardtune.data.shapes_scene import CONFUSABLE, LEVELS, look_range, make_scene

CROP = 16


def _crop(image: np.ndarray, bbox: list[int]) -> np.ndarray:
    """float[3, CROP, CROP] in [0, 1]: the box squared about its centre, one pixel of margin, resized."""
    x, y, w, h = bbox
    side = max(w, h) + 2
    x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    padded = np.pad(image, ((side, side), (side, side), (0, 0)), mode="edge")
    patch = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
    resized = Image.fromarray(patch).resize((CROP, CROP), Image.BILINEAR)
    return np.asarray(resized, np.float32).transpose(2, 0, 1) / 255


def collect(level, pair: tuple[str, str], per_class: int, seed: int):
    """-> (crops float[N, 3, CROP, CROP], labels int[N] (1: pair[1]), in_band bool[N]), N = 2 * per_class."""
    band = (look_range(level, pair[1])[0], look_range(level, pair[0])[1])
    crops, labels, in_band = {0: [], 1: []}, {0: [], 1: []}, {0: [], 1: []}
    i = 0
    while min(len(crops[0]), len(crops[1])) < per_class:
        scene = make_scene(np.random.default_rng([seed, 7, i]), level, 64)
        i += 1
        for t in scene["things"]:
            if t["kind"] in pair and len(crops[pair.index(t["kind"])]) < per_class:
                c = pair.index(t["kind"])
                crops[c].append(_crop(scene["image"], t["bbox"]))
                labels[c].append(c)
                in_band[c].append(band[0] <= t["look"] <= band[1])
    join = lambda d: np.concatenate([np.array(d[0]), np.array(d[1])])  # noqa: E731
    return join(crops), join(labels), join(in_band)


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * (CROP // 4) ** 2, 2))


def train_and_test(x, y, in_band, epochs: int, seed: int) -> dict:
    """Train on a random 80 %, test on the rest -> accuracies (overall, in the band, outside it)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(train), max(1, len(train) // 64)):
            loss = nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        right = (model(xt[test]).argmax(1) == yt[test]).numpy()
    band = in_band[test]
    return {"accuracy": right.mean(), "in_band": right[band].mean(), "outside": right[~band].mean(),
            "band_share": band.mean(), "test": len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", default="misaligned", choices=list(LEVELS))
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    level = dataclasses.replace(LEVELS[args.level], long_tail=1.0)
    print(f"level {args.level} (long_tail=1 for even classes), confusion {level.confusion}: "
          f"best possible accuracy {1 - level.confusion / 2:.3f}")
    print("| pair | held-out accuracy | in the shared band | outside it | band share | test crops | s |")
    print("|---|---|---|---|---|---|---|")
    for pair in CONFUSABLE:
        start = time.time()
        x, y, in_band = collect(level, pair, args.per_class, args.seed)
        r = train_and_test(x, y, in_band, args.epochs, args.seed)
        print(f"| {pair[0]} / {pair[1]} | {r['accuracy']:.3f} | {r['in_band']:.3f} | {r['outside']:.3f} | "
              f"{r['band_share']:.2f} | {r['test']} | {time.time() - start:.0f} |")


if __name__ == "__main__":
    main()
