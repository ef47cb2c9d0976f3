"""A split: images held decoded (ImageSplit) or as file paths decoded on access (FileSplit), targets, ids.

Both serve the same items: FileSplit reads and resizes an image exactly as ImageSplit's loader does,
so a batch is bit-identical whichever holds it. `image_split` picks one from `data.decode`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .files import load_rgb, resize_rgb
from ..errors import ConfigError, DataError

DECODE_MODES = ("auto", "once", "on_access")
# data.decode = "auto" holds a split's images decoded when they take at most this many bytes (uint8 n x 3 x S x S):
# the shapes world's 2,000 64 px images take 25 MB; COCO train2017 at 64 px would take 1.4 GB, at 640 px 145 GB.
AUTO_HOLD_BYTES = 1 << 30


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


class FileSplit:
    """A split held as image paths: each image is read and resized when an item or batch asks for it.

    `item(rgb, meta) -> (model input HxWx3 uint8, target)` builds what the item serves from the resized
    image and the split's per-image `metas` (default: the image itself and the meta as target).
    """

    def __init__(self, paths: Sequence[str], metas: Sequence[Any], ids: Sequence[Any], size: int,
                 item: Optional[Callable[[np.ndarray, Any], tuple]] = None, skipped: int = 0):
        assert len(paths) == len(metas) == len(ids)
        self.paths, self.metas, self.ids = list(paths), list(metas), list(ids)
        self.size, self.item, self.skipped = size, item, skipped

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, i: int) -> tuple[np.ndarray, Any]:
        rgb = resize_rgb(load_rgb(self.paths[i]), self.size)
        return self.item(rgb, self.metas[i]) if self.item else (rgb, self.metas[i])

    @property
    def targets(self) -> Sequence[Any]:
        """The targets; read from the files (one image each) when the split builds them from its images."""
        return self.metas if self.item is None else _Targets(self)

    def __getitem__(self, i: int) -> Example:
        image, target = self._read(i)
        return Example(torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255.0, target, self.ids[i])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, list, list]:
        """-> (FloatTensor[B, 3, S, S] in [0, 1], targets, ids), the images decoded now."""
        items = [self._read(i) for i in indices]
        stacked = np.stack([image for image, _ in items]) if items else np.zeros((0, self.size, self.size, 3), np.uint8)
        images = torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))).float() / 255.0
        return images, [t for _, t in items], [self.ids[i] for i in indices]

    def rgb(self, i: int) -> np.ndarray:
        """The i-th model input as HxWx3 uint8 (for visualisation)."""
        return self._read(i)[0]


class _Targets(Sequence):
    """FileSplit.targets when each target is built from its image: a sequence read one image at a time."""

    def __init__(self, split: FileSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.split._read(i)[1]


def hold_decoded(mode: str, n: int, size: int) -> bool:
    """Whether a split of n images of size x size is held decoded under data.decode = `mode`."""
    if mode not in DECODE_MODES:
        raise ConfigError(f"config key 'data.decode': {mode!r} is not one of {', '.join(DECODE_MODES)}")
    return mode == "once" or (mode == "auto" and n * 3 * size * size <= AUTO_HOLD_BYTES)


def readable_header(path: str) -> None:
    """DataError naming `path` unless it exists and opens as an image (its header only: no decode)."""
    try:
        with Image.open(path):
            pass
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e.__class__.__name__})") from None


def image_split(paths: Sequence[str], metas: Sequence[Any], ids: Sequence[Any], size: int, decode: str = "once",
                skip_corrupt: bool = False, item: Optional[Callable[[np.ndarray, Any], tuple]] = None):
    """An ImageSplit (images decoded now) or a FileSplit (decoded on access), as `decode` and the size say.

    Either way a missing or unreadable image raises DataError naming it, or is left out with
    `skip_corrupt` (counted in .skipped). A FileSplit checks each file's header now; a file whose header
    reads but whose pixels do not raises DataError when a batch reads it (`rewardtune data check` finds those).
    """
    if hold_decoded(decode, len(paths), size):
        arrays, kept = load_images(paths, size, skip_corrupt)
        items = [item(arrays[j], metas[i]) if item else (arrays[j], metas[i]) for j, i in enumerate(kept)]
        inputs = np.stack([x for x, _ in items]) if items else np.zeros((0, size, size, 3), np.uint8)
        return ImageSplit(inputs, [t for _, t in items], [ids[i] for i in kept], skipped=len(paths) - len(kept))
    kept = []
    for i, path in enumerate(paths):
        try:
            readable_header(path)
            kept.append(i)
        except DataError:
            if not skip_corrupt:
                raise
    return FileSplit([paths[i] for i in kept], [metas[i] for i in kept], [ids[i] for i in kept], size, item,
                     skipped=len(paths) - len(kept))
