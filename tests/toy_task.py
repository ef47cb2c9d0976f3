"""A tiny task for testing the core alone: count the bright squares in a 16x16 image (0-3).

Tokens: [count, count, end] (two tokens so sequences have some length); vocab 5 (0..3 + end).
Its prediction files (`rewardtune score toy_task --pred P --gt G`): JSON objects {image id: count}.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from rewardtune.data.dataset import ImageSplit
from rewardtune.errors import DataError
from rewardtune.tasks.base import FileScorer, Task

END = 4


class CountCodec:
    vocab_size, max_len, end_token = 5, 4, END

    def encode(self, target, rng=None):
        return torch.tensor([target, target, END])

    def decode(self, tokens, step_log_probs=None, image=None):
        tokens = [t for t in list(tokens) if 0 <= int(t) < END]
        return int(tokens[0]) if tokens else -1

    def grammar(self):
        return None


def _images(n: int, seed: int, size: int):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, n)
    images = np.zeros((n, size, size, 3), np.uint8)
    for i, k in enumerate(counts):
        for j in range(k):
            y, x = 4 * (j // 2), 4 * (j % 2) + 8 * (j // 2)
            images[i, y:y + 4, x:x + 4] = 255
    return images, counts.tolist()


def accuracy_reward(outputs, targets):
    r = torch.tensor([float(o == t) for o, t in zip(outputs, targets)])
    return r, {"correct": r}


def make_task(config, state=None):
    size = config.data.image_size

    def datasets():
        tr, tr_t = _images(64, 0, size)
        va, va_t = _images(16, 1, size)
        return {"train": ImageSplit(tr, tr_t, list(range(64))), "val": ImageSplit(va, va_t, list(range(100, 116)))}

    def metrics(outputs, targets, ids):
        return {"accuracy": float(np.mean([o == t for o, t in zip(outputs, targets)]))}

    return Task(name="toy", codec=CountCodec(), datasets=datasets, rewards={"accuracy": accuracy_reward},
                metrics=metrics, write_predictions=lambda o, t, i, d: None,
                visualize=lambda im, o, t: im, state={"seen": 1}, primary_metric="accuracy")


def score_files(pred_path, gt_path):
    """Accuracy of the predicted counts {image id: count} against the true ones."""
    with open(pred_path) as f:
        pred = json.load(f)
    with open(gt_path) as f:
        gt = json.load(f)
    unknown = sorted(set(pred) - set(gt))
    if unknown:
        raise DataError(f"{pred_path}: image id {unknown[0]} is not in {gt_path}")
    return {"accuracy": float(np.mean([pred[k] == gt[k] for k in pred])), "num_images": len(pred)}


FILE_SCORER = FileScorer(files=(("pred", "JSON {image id: predicted count}"), ("gt", "JSON {image id: true count}")),
                         score=score_files)
