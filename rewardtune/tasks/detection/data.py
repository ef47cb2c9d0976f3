"""COCO instances files + image folders -> ImageSplits of detection targets.

A target: {"boxes": float32[m, 4] (ymin, xmin, ymax, xmax) normalised by the image's size,
"classes": int64[m] contiguous (category ids sorted), "width", "height" (original pixels),
"annotations": the image's original COCO annotation dicts, crowd ones included}. Crowd boxes are
not training targets but are kept so the metric matches pycocotools on the original file.

Every problem raises DataError with one line naming the file and the annotation or image id.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...data.dataset import image_split
from ...data.files import inside, read_json, require_folder
from ...errors import DataError

# Boxes may overshoot the image by this many pixels (rounding in real annotations); they are clipped.
EDGE_TOLERANCE = 1.0


@dataclass
class Instances:
    """A validated COCO instances file."""

    path: str
    images: list[dict]  # sorted by id
    annotations: dict[int, list[dict]]  # image id -> its annotations (crowd included), file order
    categories: list[dict]  # sorted by id


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _records(raw: dict, key: str, fields: dict, path: str) -> list[dict]:
    """Check raw[key] is a list of objects whose `fields` have the right types."""
    items = raw.get(key)
    if not isinstance(items, list):
        raise DataError(f"{path}: '{key}' must be a list")
    singular = key.rstrip("s").replace("categorie", "category")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: {singular} #{i} is not an object")
        for name, check in fields.items():
            if name not in item or not check(item[name]):
                ident = item.get("id", f"#{i}")
                raise DataError(f"{path}: {singular} {ident}: missing or invalid '{name}' ({item.get(name)!r})")
    return items


def _unique_ids(items: list[dict], what: str, path: str) -> dict[int, dict]:
    by_id = {}
    for item in items:
        if item["id"] in by_id:
            raise DataError(f"{path}: duplicate {what} id {item['id']}")
        by_id[item["id"]] = item
    return by_id


def _check_box(ann: dict, image: dict, path: str) -> None:
    x, y, w, h = ann["bbox"]
    where = f"{path}: annotation {ann['id']} (image {ann['image_id']})"
    if not (w > 0 and h > 0):
        raise DataError(f"{where}: box {ann['bbox']} has no size")
    W, H, tol = image["width"], image["height"], EDGE_TOLERANCE
    if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
        raise DataError(f"{where}: box {ann['bbox']} lies outside the {W}x{H} image")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise DataError(f"{where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")


def _schema(raw: Any, path: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(images, categories, annotations) of a parsed instances file, each record's fields checked."""
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a COCO instances object with images, annotations, categories")
    positive = lambda v: _is_int(v) and v > 0  # noqa: E731
    images = _records(raw, "images", {"id": _is_int, "file_name": lambda v: isinstance(v, str) and v,
                                      "width": positive, "height": positive}, path)
    categories = _records(raw, "categories", {"id": _is_int, "name": lambda v: isinstance(v, str)}, path)
    bbox_ok = lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_number, v))  # noqa: E731
    anns = _records(raw, "annotations", {"id": _is_int, "image_id": _is_int, "category_id": _is_int,
                                         "bbox": bbox_ok}, path)
    return images, categories, anns


def parse_instances(raw: Any, path: str) -> Instances:
    """Validate a parsed COCO instances JSON (schema, ids, boxes) -> Instances."""
    images, categories, anns = _schema(raw, path)
    image_by_id = _unique_ids(images, "image", path)
    category_by_id = _unique_ids(categories, "category", path)
    by_image: dict[int, list[dict]] = {i: [] for i in image_by_id}
    for ann in anns:
        if ann["image_id"] not in image_by_id:
            raise DataError(f"{path}: annotation {ann['id']}: unknown image_id {ann['image_id']}")
        if ann["category_id"] not in category_by_id:
            raise DataError(f"{path}: annotation {ann['id']}: unknown category_id {ann['category_id']}")
        _check_box(ann, image_by_id[ann["image_id"]], path)
        by_image[ann["image_id"]].append(ann)
    return Instances(path, sorted(images, key=lambda im: im["id"]), by_image,
                     sorted(categories, key=lambda c: c["id"]))


def check_instances(root: str, split: str) -> dict:
    """DataCheck.check: every problem of ROOT/annotations/instances_<split>.json (unknown image or
    category, box outside its image or without size, category without annotations) and its images."""
    ann_path = os.path.join(root, "annotations", f"instances_{split}.json")
    image_dir = os.path.join(root, "images", split)
    raw = read_json(ann_path)
    images, categories, anns = _schema(raw, ann_path)
    image_by_id = _unique_ids(images, "image", ann_path)
    used = {c: 0 for c in _unique_ids(categories, "category", ann_path)}
    problems = []
    for ann in anns:
        if ann["image_id"] not in image_by_id:
            problems.append(("annotation of an unknown image", f"{ann_path}: annotation {ann['id']}: "
                                                               f"image_id {ann['image_id']}"))
        elif ann["category_id"] not in used:
            problems.append(("annotation of an unknown category", f"{ann_path}: annotation {ann['id']}: "
                                                                  f"category_id {ann['category_id']}"))
        else:
            used[ann["category_id"]] += 1
            try:
                _check_box(ann, image_by_id[ann["image_id"]], ann_path)
            except DataError as e:
                kind = "box outside its image" if "outside" in str(e) else "malformed box"
                problems.append((kind, str(e)))
    for c in categories:
        if not used[c["id"]]:
            problems.append(("empty category", f"{ann_path}: category {c['id']} ({c['name']!r}) has no annotations"))
    if not images:
        problems.append(("empty split", f"{ann_path}: the split has no images"))
    require_folder(image_dir, source=ann_path)
    entries = [(im["id"], inside(image_dir, im["file_name"], context=f"{ann_path}: image {im['id']}"),
                im["width"], im["height"]) for im in images]
    return {"annotations": ann_path, "image_folder": image_dir, "problems": problems, "images": entries,
            "counts": {"images": len(images), "annotations": len(anns), "categories": len(categories)}}


def annotated_splits(root: str, prefix: str) -> list[str]:
    """DataCheck.splits: the <split> of every ROOT/annotations/<prefix><split>.json, sorted."""
    folder = os.path.join(root, "annotations")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [n[len(prefix):-len(".json")] for n in names if n.startswith(prefix) and n.endswith(".json")]


def read_instances(path: str) -> Instances:
    return parse_instances(read_json(path), path)


def split_paths(config, which: str) -> tuple[str, str]:
    """-> (annotation file, image folder) of the "train" or "val" split, as the config names them."""
    data = config.data
    split = data.train_split if which == "train" else data.val_split
    ann = data.train_annotations if which == "train" else data.val_annotations
    img = data.train_images if which == "train" else data.val_images
    ann = ann or os.path.join(data.root, "annotations", f"instances_{split}.json")
    img = img or os.path.join(data.root, "images", split)
    return ann, img


def first_images(inst: Instances, limit: int) -> list[dict]:
    """The first `limit` images by id (all when limit is 0); an empty split raises DataError."""
    images = inst.images[:limit] if limit > 0 else inst.images
    if not images:
        raise DataError(f"{inst.path}: the split has no images")
    return images


def task_state(inst: Instances, limit: int = 0) -> dict:
    """Categories and per-class non-crowd instance counts over the first `limit` images (0 = all)."""
    index = {c["id"]: i for i, c in enumerate(inst.categories)}
    counts = [0] * len(inst.categories)
    for image in first_images(inst, limit):
        for ann in inst.annotations[image["id"]]:
            if not ann.get("iscrowd", 0):
                counts[index[ann["category_id"]]] += 1
    return {"categories": [{"id": c["id"], "name": c["name"]} for c in inst.categories],
            "class_counts": counts}


def make_target(image: dict, anns: list[dict], index: dict[int, int], path: str) -> dict:
    """One image's annotations -> a target (see the module docstring)."""
    boxes, classes = [], []
    W, H = image["width"], image["height"]
    for ann in anns:
        if ann["category_id"] not in index:
            raise DataError(f"{path}: annotation {ann['id']}: category_id {ann['category_id']} is not "
                            f"among the training categories")
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        boxes.append([y / H, x / W, (y + h) / H, (x + w) / W])
        classes.append(index[ann["category_id"]])
    return {"boxes": np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0.0, 1.0),
            "classes": np.asarray(classes, np.int64), "width": W, "height": H, "annotations": list(anns)}


def load_split(config, which: str, state: dict):
    """Read the "train" or "val" split: validated annotations, targets, and the images (decoded now or on
    access, as data.decode says)."""
    ann_path, image_dir = split_paths(config, which)
    inst = read_instances(ann_path)
    limit = config.data.max_train_images if which == "train" else config.data.max_val_images
    images = first_images(inst, limit)
    require_folder(image_dir, source=ann_path)
    paths = [inside(image_dir, image["file_name"], context=f"{ann_path}: image {image['id']}") for image in images]
    index = {c["id"]: i for i, c in enumerate(state["categories"])}
    targets = [make_target(im, inst.annotations[im["id"]], index, ann_path) for im in images]
    split = image_split(paths, targets, [image["id"] for image in images], config.data.image_size,
                        config.data.decode, config.data.skip_corrupt)
    if not len(split):
        raise DataError(f"{ann_path}: no readable images in {image_dir}")
    return split
