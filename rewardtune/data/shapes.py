"""The synthetic shapes world as COCO files: `generate_shapes` writes, from a seed, images with COCO instances,
panoptic (PNG + JSON) and captions annotations in the COCO 2017 layout, so all four tasks read it through the
loaders for real COCO. What a scene holds and how it is drawn: `rewardtune.data.shapes_scene`.

Conventions:
- Panoptic PNGs have no void: every pixel is a thing (segment id j = the j-th instance annotation of
  the image, whose id is image_id * 100 + j) or stuff (segment id 1000 + its category id).
- Image ids: train 1.., val 10^8 + 1.., test 2 * 10^8 + 1..; file names are the 12-digit id.
- Image i of split s is drawn from `np.random.default_rng([seed, s, i])`: the same arguments give
  byte-identical files, and a split does not depend on the sizes of the others.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .files import write_json_atomic
from .shapes_captions import describe
from .shapes_scene import COLOURS, KINDS, LEVELS, STUFF, STUFF_ID_OFFSET, WorldLevel, check_sizes, make_scene
from ..errors import ConfigError

SPLITS = ("train", "val", "test")
SPLIT_ID_OFFSET = 10**8


def categories(panoptic: bool = False) -> list[dict]:
    """Thing categories (ids 1..K, the shape kinds); with `panoptic`, also stuff (ids 101..) and colours."""
    things = [{"id": i + 1, "name": k, "supercategory": "shape"} for i, k in enumerate(KINDS)]
    if not panoptic:
        return things
    palette = list(COLOURS.values())
    for i, c in enumerate(things):
        c.update(isthing=1, color=list(palette[i % len(palette)]))
    return things + [{"id": STUFF_ID_OFFSET + i, "name": name, "supercategory": "background",
                      "isthing": 0, "color": list(s.colour)} for i, (name, s) in enumerate(STUFF.items())]


def _check_args(num: dict, image_size, seed, level) -> WorldLevel:
    for key, value in [*num.items(), ("image_size", image_size), ("seed", seed)]:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"shapes: {key}={value!r} must be a non-negative integer")
        if key.startswith("num_") and value >= SPLIT_ID_OFFSET:
            raise ConfigError(f"shapes: {key}={value!r} must be below {SPLIT_ID_OFFSET}")
    if not 16 <= image_size <= 1024:
        raise ConfigError(f"shapes: image_size={image_size!r} must be in 16..1024")
    if isinstance(level, WorldLevel):
        return level
    if level not in LEVELS:
        raise ConfigError(f"shapes: level={level!r} is unknown; choose one of {', '.join(LEVELS)}")
    return LEVELS[level]


def _write_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)  # smaller and faster than 6 here


def _records(scene: dict, image_id: int, file_name: str, size: int) -> tuple[list[dict], dict]:
    """One scene's COCO instance annotations and its COCO panoptic annotation."""
    things, seg = scene["things"], scene["segments"]
    masks = (seg[..., None] == np.arange(1, len(things) + 1)).astype(np.uint8)  # (S, S, n)
    rles = mask_utils.encode(np.asfortranarray(masks)) if things else []
    instances = [{"id": image_id * 100 + t["id"], "image_id": image_id, "category_id": t["category_id"],
                  "bbox": t["bbox"], "area": t["area"], "iscrowd": 0,
                  "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")}}
                 for t, rle in zip(things, rles)]
    segments_info = [{"id": s["id"], "category_id": s["category_id"], "iscrowd": 0, "bbox": s["bbox"],
                      "area": s["area"]} for s in things + scene["stuff"]]
    return instances, {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}


def _write_split(out_dir: str, split: str, split_index: int, n: int, size: int, seed: int,
                 level: WorldLevel) -> dict:
    """Draw and write one split's images, panoptic PNGs and its three JSON files -> counts."""
    image_dir = os.path.join(out_dir, "images", split)
    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(ann_dir, f"panoptic_{split}"), exist_ok=True)
    images, instances, panoptic, captions = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, split_index, i])
        scene = make_scene(rng, level, size)
        image_id = split_index * SPLIT_ID_OFFSET + i + 1
        file_name = f"{image_id:012d}.png"
        seg = scene["segments"]
        _write_png(scene["image"], os.path.join(image_dir, file_name))
        _write_png(np.stack([seg & 255, (seg >> 8) & 255, (seg >> 16) & 255], -1).astype(np.uint8),
                   os.path.join(ann_dir, f"panoptic_{split}", file_name))
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        image_instances, image_panoptic = _records(scene, image_id, file_name, size)
        instances += image_instances
        panoptic.append(image_panoptic)
        captions += [{"id": image_id * 10 + k, "image_id": image_id, "caption": text}
                     for k, text in enumerate(describe(scene["things"], scene["stuff"], size, rng))]
    header = {"info": {"description": "rewardtune synthetic shapes world", "version": "1"},
              "licenses": [], "images": images}
    for name, annotations, cats in [("instances", instances, categories()), ("captions", captions, None),
                                    ("panoptic", panoptic, categories(panoptic=True))]:
        extra = {"categories": cats} if cats else {}
        write_json_atomic({**header, "annotations": annotations, **extra},
                          os.path.join(ann_dir, f"{name}_{split}.json"))
    return {"images": n, "objects": len(instances), "captions": len(captions)}


def generate_shapes(out_dir: str, num_train: int = 2000, num_val: int = 256, num_test: int = 256,
                    image_size: int = 64, seed: int = 0, level: str | WorldLevel = "medium") -> dict:
    """Write a shapes-world dataset in the COCO 2017 layout under out_dir -> a summary.

    Returns {out_dir, level, seed, image_size, splits: {split: {images, objects, captions}},
    categories (thing names, ids 1..K), stuff (stuff names, ids 101..)}.
    Unknown levels and bad values raise ConfigError naming them.
    """
    num = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
    world = _check_args(num, image_size, seed, level)
    check_sizes(world, image_size)  # fail early when the sizes do not fit this image size
    splits = {split: _write_split(out_dir, split, s, n, image_size, seed, world)
              for s, (split, n) in enumerate(zip(SPLITS, num.values()))}
    summary = {"level": level if isinstance(level, str) else "custom", "seed": seed, "image_size": image_size,
               "splits": splits, "categories": list(KINDS), "stuff": list(STUFF)}
    write_json_atomic({**summary, "params": dataclasses.asdict(world), "colours": list(COLOURS),
                       "size_unit": "pixels of a 64x64 image, scaled by image_size / 64"},
                      os.path.join(out_dir, "world.json"))  # no out_dir: the same arguments, the same bytes
    return {"out_dir": out_dir, **summary}
