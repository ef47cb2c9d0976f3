"""An in-memory split: images resized to a square uint8 array, targets, ids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .files import load_rgb, resize_rgb
from ..errors import DataError


@dataclass
class Example:
    """One item of a split: image FloatTensor[3, H, W] in [0, 1], the task target, the image id."""

    image: torch.Tensor
    target: Any
    id: Any


class ImageSplit:
    """A sequence of Examples; images are held as uint8 [n, 3, S, S] and served as float in [0, 1]."""

    def __init__(self, images: np.ndarray, targets: Sequence[Any], ids: Sequence[Any], skipped: int = 0):
        assert len(images) == len(targets) == len(ids)
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (n, 3, S, S)
        self.targets = list(targets)
        self.ids = list(ids)
        self.skipped = skipped  # corrupt images skipped while loading

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Example:
        return Example(self.images[i].float() / 255.0, self.targets[i], self.ids[i])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, list, list]:
        """-> (FloatTensor[B, 3, S, S] in [0, 1], targets, ids)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return (self.images[idx].float() / 255.0, [self.targets[i] for i in indices],
                [self.ids[i] for i in indices])

    def rgb(self, i: int) -> np.ndarray:
        """The i-th image as HxWx3 uint8 (for visualisation)."""
        return self.images[i].permute(1, 2, 0).numpy()


def load_images(paths: Sequence[str], size: int, skip_corrupt: bool = False) -> tuple[np.ndarray, list[int]]:
    """Read and resize images -> (uint8 [n, size, size, 3], indices of the images kept).

    A missing or corrupt image raises DataError naming it, unless `skip_corrupt` (then it is left out).
    """
    kept, arrays = [], []
    for i, path in enumerate(paths):
        try:
            arrays.append(resize_rgb(load_rgb(path), size))
            kept.append(i)
        except DataError:
            if not skip_corrupt:
                raise
    if not arrays:
        return np.zeros((0, size, size, 3), np.uint8), kept
    return np.stack(arrays), kept
