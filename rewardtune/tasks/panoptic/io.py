"""COCO panoptic files: read JSON + PNG folders (user paths or the COCO 2017 layout), write predictions.

Layout: `ROOT/annotations/panoptic_<split>.json`, PNGs in the folder named as the JSON without
`.json`, images in `ROOT/images/<split>/` named by the panoptic `images` list. Explicit paths
(`data.train_annotations`, `data.train_images`, ...) replace the layout. Every problem with a file
raises DataError with one line naming it.
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ...data.dataset import ImageSplit, image_split
from ...data.files import inside, load_rgb, read_json, require_folder, write_json_atomic
from ...errors import DataError
from .maps import VOID, bbox_of, id_to_rgb, resize_nearest, rgb_to_id

FULL_MAP_MAX_PIXELS = 128 * 128  # full-resolution gt maps up to this size stay in memory


def split_paths(config, split: str) -> tuple[str, str, str]:
    """(panoptic JSON, PNG folder, image folder) of split 'train' or 'val'."""
    data = config.data
    name = data.train_split if split == "train" else data.val_split
    ann = getattr(data, f"{split}_annotations") or os.path.join(data.root, "annotations", f"panoptic_{name}.json")
    images = getattr(data, f"{split}_images") or os.path.join(data.root, "images", name)
    return ann, png_folder(ann), images


def png_folder(json_path: str) -> str:
    """The PNG folder of a panoptic JSON: its path without `.json`."""
    return json_path[: -len(".json")] if json_path.endswith(".json") else json_path + "_png"


def _int_field(obj: Any, key: str, path: str, where: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or float(value) != int(value)):
        raise DataError(f"{path}: {where} has no integer '{key}'")
    return int(value)


def read_panoptic_json(path: str, need_categories: bool = True) -> dict:
    """Read and check a COCO panoptic JSON (annotations with segments_info; categories if needed)."""
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("annotations"), list):
        raise DataError(f"{path}: not a COCO panoptic JSON (no 'annotations' list)")
    if need_categories and not isinstance(raw.get("categories"), list):
        raise DataError(f"{path}: not a COCO panoptic JSON (no 'categories' list)")
    for i, ann in enumerate(raw["annotations"]):
        _int_field(ann, "image_id", path, f"annotation {i}")
        if not isinstance(ann.get("file_name"), str) or not isinstance(ann.get("segments_info"), list):
            raise DataError(f"{path}: annotation {i} needs 'file_name' and a 'segments_info' list")
        for seg in ann["segments_info"]:
            for key in ("id", "category_id"):
                _int_field(seg, key, path, f"a segment of image {ann['image_id']}")
    for i, cat in enumerate(raw.get("categories") or []):
        _int_field(cat, "id", path, f"category {i}")
    return raw


def categories_of(raw: dict) -> list[dict]:
    """[{id, name, isthing}] sorted by id, from a panoptic JSON's categories."""
    cats = [{"id": int(c["id"]), "name": str(c.get("name", c["id"])), "isthing": int(c.get("isthing", 0) == 1)}
            for c in raw["categories"]]
    return sorted(cats, key=lambda c: c["id"])


def read_png_ids(path: str) -> np.ndarray:
    """A COCO panoptic PNG -> int32 [H, W] segment ids (DataError naming the file if unreadable)."""
    return rgb_to_id(load_rgb(path))


def check_segments(ids: np.ndarray, segments: Sequence[dict], png: str, json_path: str,
                   category_ids: Optional[set] = None, all_in_png: bool = True) -> None:
    """Every PNG id (VOID aside) must be in segments_info, with a known category; and, when
    `all_in_png` (predictions, as panopticapi checks them), every listed segment must be in the PNG."""
    listed = {int(s["id"]) for s in segments}
    if len(listed) < len(segments):
        twice = next(i for i in listed if sum(int(s["id"]) == i for s in segments) > 1)
        raise DataError(f"{json_path}: segment id {twice} is listed more than once in the segments_info of "
                        f"{os.path.basename(png)}")
    present = {int(v) for v in np.unique(ids)}
    missing = sorted(present - listed - {VOID})
    if missing:
        raise DataError(f"{png}: segment id {missing[0]} is in the PNG but not in the segments_info of "
                        f"{json_path}")
    absent = sorted(listed - present)
    if absent and all_in_png:
        raise DataError(f"{json_path}: segment id {absent[0]} of {os.path.basename(png)} is in segments_info "
                        "but not in the PNG")
    if category_ids is not None:
        for s in segments:
            if int(s["category_id"]) not in category_ids:
                raise DataError(f"{json_path}: segment {s['id']} of {os.path.basename(png)} has unknown "
                                f"category_id {s['category_id']}")


def _clean_segments(segments: Sequence[dict], ids: np.ndarray, isthing: dict) -> list[dict]:
    """segments_info with ints and isthing; 'area' kept from the JSON (panopticapi uses it), else counted."""
    out = []
    for s in segments:
        area = s.get("area")
        if area is None:
            area = int((ids == int(s["id"])).sum())
        out.append({"id": int(s["id"]), "category_id": int(s["category_id"]),
                    "isthing": isthing[int(s["category_id"])], "iscrowd": int(s.get("iscrowd", 0) == 1),
                    "area": area})
    return out


def make_target(full: np.ndarray, segments: list[dict], size: int, png: str, file_name: str) -> dict:
    """The task target: the gt map at the model's resolution (for the codec and reward) + full res (metric)."""
    small = resize_nearest(full, size, size).astype(np.int32, copy=False)  # `full` itself when same size
    values, counts = np.unique(small, return_counts=True)
    area = dict(zip(values.tolist(), counts.tolist()))
    small_segments = [dict(s, area=area[s["id"]]) for s in segments if s["id"] in area]
    keep = full.size <= FULL_MAP_MAX_PIXELS
    return {"map": small, "segments": small_segments, "full_segments": segments,
            "full_size": tuple(full.shape), "full_map": full if keep else None, "png": png,
            "file_name": file_name}


def full_gt(target: dict) -> dict:
    """{"map", "segments"} of a target at its original resolution (read from its PNG if not held)."""
    full = target["full_map"]
    if full is None:
        full = read_png_ids(target["png"])
    return {"map": full, "segments": target["full_segments"]}


def panoptic_item(rgb: np.ndarray, meta: tuple) -> tuple[np.ndarray, dict]:
    """(resized image, (annotation, PNG path, JSON path, model size, category ids, isthing)) -> (image, target):
    the PNG read and checked against its segments_info."""
    ann, png, ann_path, size, category_ids, isthing = meta
    full = read_png_ids(png)
    check_segments(full, ann["segments_info"], png, ann_path, category_ids, all_in_png=False)
    segments = _clean_segments(ann["segments_info"], full, isthing)
    return rgb, make_target(full, segments, size, png, ann["file_name"])


def load_split(config, split: str, names: Optional[dict] = None):
    """A split of (image, panoptic target, image_id); fills `names[image_id] = (png name, (H, W))`.

    Images and PNGs are read now, or when a batch reads them, as data.decode says; on access the
    original size comes from the JSON's images list ('height', 'width'), else from the PNG's header."""
    ann_path, pngs, image_dir = split_paths(config, split)
    raw = read_panoptic_json(ann_path)
    isthing = {c["id"]: c["isthing"] for c in categories_of(raw)}
    if not isinstance(raw.get("images"), list):
        raise DataError(f"{ann_path}: not a COCO panoptic JSON (no 'images' list)")
    image_info = {img["id"]: img for img in raw["images"]
                  if isinstance(img, dict) and "id" in img and isinstance(img.get("file_name"), str)}
    anns = raw["annotations"]
    limit = config.data.max_train_images if split == "train" else config.data.max_val_images
    if limit:
        anns = anns[:limit]
    if not anns:
        raise DataError(f"{ann_path}: the split has no images")
    require_folder(image_dir, source=ann_path)
    require_folder(pngs, "panoptic PNG folder", ann_path)
    paths, metas = [], []
    size, category_ids = config.data.image_size, set(isthing)
    for ann in anns:
        if ann["image_id"] not in image_info:
            raise DataError(f"{ann_path}: image_id {ann['image_id']} has no entry in the 'images' list")
        where = f"{ann_path}: image {ann['image_id']}"
        paths.append(inside(image_dir, image_info[ann["image_id"]]["file_name"], context=where))
        metas.append((ann, inside(pngs, ann["file_name"], context=where), ann_path, size, category_ids, isthing))
    out = image_split(paths, metas, [ann["image_id"] for ann in anns], size, config.data.decode,
                      config.data.skip_corrupt, panoptic_item)
    if not len(out):
        raise DataError(f"{ann_path}: no readable images in {image_dir}")
    if names is not None:
        for i, image_id in enumerate(out.ids):
            names[image_id] = _name_and_shape(out, i, image_info[image_id])
    return out


def _name_and_shape(split, i: int, image: dict) -> tuple[str, tuple[int, int]]:
    """(PNG name, original (H, W)) of item i: from its target when held, else the JSON or the PNG header."""
    if isinstance(split, ImageSplit):
        target = split.targets[i]
        return target["file_name"], tuple(target["full_size"])
    ann, png = split.metas[i][:2]
    height, width = image.get("height"), image.get("width")
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return ann["file_name"], (height, width)
    try:
        with Image.open(png) as im:
            return ann["file_name"], (im.height, im.width)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{png}: panoptic PNG missing or unreadable ({e.__class__.__name__})") from None


def _save_png_atomic(rgb: np.ndarray, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    Image.fromarray(rgb).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_panoptic(outputs: Sequence[dict], ids: Sequence[Any], out_dir: str, categories: Sequence[dict],
                   names: Optional[dict] = None) -> str:
    """Write `out_dir/panoptic.json` + `out_dir/panoptic/<name>.png` (COCO panoptic); returns the JSON path.

    An image known from the loaded data keeps its gt PNG name and original size (the map is
    upsampled, nearest); any other is written at the output's resolution as `<id>.png`.
    """
    png_dir = os.path.join(out_dir, "panoptic")
    os.makedirs(png_dir, exist_ok=True)
    annotations = []
    for output, image_id in zip(outputs, ids):
        name, shape = (names or {}).get(image_id, (f"{image_id}.png", np.asarray(output["map"]).shape))
        ids_map = resize_nearest(np.asarray(output["map"]), *shape)
        present = {int(v) for v in np.unique(ids_map)}
        segments = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": 0,
                     "isthing": int(s.get("isthing", 0)), "area": int((ids_map == s["id"]).sum()),
                     "bbox": bbox_of(ids_map, int(s["id"]))}
                    for s in output["segments"] if int(s["id"]) in present and int(s["id"]) != VOID]
        keep = {s["id"] for s in segments}
        ids_map = np.where(np.isin(ids_map, list(keep)), ids_map, VOID)  # unlisted ids -> VOID
        _save_png_atomic(id_to_rgb(ids_map), os.path.join(png_dir, os.path.basename(name)))
        annotations.append({"image_id": image_id, "file_name": os.path.basename(name), "segments_info": segments})
    path = os.path.join(out_dir, "panoptic.json")
    write_json_atomic({"annotations": annotations, "categories": list(categories)}, path)
    return path
