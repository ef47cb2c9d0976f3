"""Colorization data: folders of PNG/JPEG images (the shapes world or the user's photos).

A split's model input is the gray (Rec. 601 luma) image replicated to 3 channels; its targets are
`ColorTarget`s holding the original RGB and that gray image. Ids are the file names without
extension; predictions are written as `out_dir/images/<id>.png`.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ...data.dataset import ImageSplit, hold_decoded, image_split, load_images
from ...data.files import require_folder
from ...errors import ConfigError, DataError
from .codec import ColorTarget, render_outputs
from .color import gray_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def list_images(folder: str) -> dict[str, str]:
    """{name without extension: path} of the PNG/JPEG files in `folder`, sorted by name.

    A missing or empty folder, or two files sharing a name (a.png, a.jpg), raise DataError.
    """
    require_folder(folder)
    files: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(path):
            continue
        stem = os.path.splitext(name)[0]
        if stem in files:
            raise DataError(f"{path}: same name as {os.path.basename(files[stem])}; rename one of them")
        files[stem] = path
    if not files:
        raise DataError(f"{folder}: no PNG or JPEG images in this folder")
    return files


def split_folder(config: Any, split: str) -> str:
    """The image folder of `split` ("train" | "val"): data.<split>_images or ROOT/images/<name>."""
    explicit = config.data.train_images if split == "train" else config.data.val_images
    if explicit:
        return explicit
    if not config.data.root:
        raise ConfigError(f"config key 'data.root': empty; set it to a dataset folder (images/<split>/) "
                          f"or set data.{split}_images to a folder of photos")
    name = config.data.train_split if split == "train" else config.data.val_split
    return os.path.join(config.data.root, "images", name)


def make_split(rgb: np.ndarray, ids: Sequence[str], skipped: int = 0) -> ImageSplit:
    """Original images uint8 [n, S, S, 3] -> an ImageSplit of gray inputs with ColorTarget targets."""
    gray = gray_uint8(rgb)  # (n, S, S)
    inputs = np.repeat(gray[..., None], 3, axis=-1)  # (n, S, S, 3), what the model sees
    targets = [ColorTarget(rgb=rgb[i], gray=gray[i]) for i in range(len(rgb))]
    return ImageSplit(inputs, targets, list(ids), skipped)


def gray_item(rgb: np.ndarray, meta: Any = None) -> tuple[np.ndarray, ColorTarget]:
    """One resized image -> (the gray input replicated to 3 channels, its ColorTarget), as make_split makes them."""
    target = ColorTarget.from_rgb(rgb)
    return np.repeat(target.gray[..., None], 3, axis=-1), target


def load_split(folder: str, size: int, skip_corrupt: bool = False, limit: int = 0, decode: str = "once"):
    """Every image of `folder` (the first `limit` by name; 0 = all), resized to size x size; decoded now,
    or on access (a FileSplit) as `decode` says."""
    files = list_images(folder)
    ids = list(files)[: limit or None]
    if hold_decoded(decode, len(ids), size):
        rgb, kept = load_images([files[k] for k in ids], size, skip_corrupt)
        split = make_split(rgb, [ids[i] for i in kept], skipped=len(ids) - len(kept))
    else:
        split = image_split([files[k] for k in ids], [None] * len(ids), ids, size, "on_access", skip_corrupt, gray_item)
    if not len(split):
        raise DataError(f"{folder}: none of its {len(ids)} images could be read")
    return split


def datasets(config: Any) -> dict[str, ImageSplit]:
    """{"train", "val"} splits from the config's folders, images resized to data.image_size."""
    d = config.data
    return {
        "train": load_split(split_folder(config, "train"), d.image_size, d.skip_corrupt, d.max_train_images, d.decode),
        "val": load_split(split_folder(config, "val"), d.image_size, d.skip_corrupt, d.max_val_images, d.decode),
    }


def load_photos(paths: Sequence[str], size: int, skip_corrupt: bool = False) -> ImageSplit:
    """The user's photos for `rewardtune predict`: image files and/or folders of images."""
    files: dict[str, str] = {}
    for path in paths:
        found = list_images(path) if os.path.isdir(path) else {os.path.splitext(os.path.basename(path))[0]: path}
        for stem, p in found.items():
            if stem in files and files[stem] != p:
                raise DataError(f"{p}: same name as {files[stem]}; predictions would overwrite each other")
            files[stem] = p
    if not files:
        raise DataError("no images given")
    ids = list(files)
    rgb, kept = load_images([files[k] for k in ids], size, skip_corrupt)
    if not kept:
        raise DataError(f"none of the {len(ids)} images could be read")
    return make_split(rgb, [ids[i] for i in kept], skipped=len(ids) - len(kept))


def write_predictions(outputs: Sequence[Any], ids: Sequence[Any], out_dir: str,
                      targets: Optional[Sequence[ColorTarget]] = None) -> None:
    """Write `out_dir/images/<id>.png` for each output, each file atomically (tmp + rename).

    With `targets`, outputs are decoded chroma grids rendered with each target's gray image;
    without, outputs must already be RGB images (HxWx3 uint8).
    """
    if targets is not None:
        images = list(render_outputs(outputs, targets).numpy()) if len(outputs) else []
    else:
        images = [np.asarray(o) for o in outputs]
        bad = [str(i) for i, im in zip(ids, images) if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3]
        if bad:
            raise TypeError(f"colorization write_predictions: outputs for {bad[:3]} are not HxWx3 uint8 images; "
                            "pass targets=... to render decoded chroma grids with their gray inputs")
    folder = os.path.join(out_dir, "images")
    os.makedirs(folder, exist_ok=True)
    for image, id_ in zip(images, ids):
        name = os.path.basename(str(id_))
        if not name or name in (".", ".."):
            raise DataError(f"prediction id {id_!r} is not a file name")
        path = os.path.join(folder, name + ".png")
        tmp = f"{path}.tmp.{os.getpid()}"
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
