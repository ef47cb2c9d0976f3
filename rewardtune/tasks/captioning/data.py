"""Caption data: COCO captions JSON (+ an image folder) or a Karpathy split file (`dataset_coco.json`).

Targets are `{"refs": [caption, ...]}` with the raw reference captions (tokenised when used); ids
are the COCO image ids. Every malformed input raises `DataError`, one line naming the file and the
image id.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from ...data.dataset import image_split
from ...data.files import inside, read_json, require_folder
from ...errors import ConfigError, DataError


@dataclass
class CaptionRecord:
    """One image of a caption file: id, image path, reference captions."""

    id: Any
    path: str
    refs: list


def check_captions(path: str, image_id: Any, captions: Sequence[Any]) -> list:
    """Reference captions of one image, or DataError naming the file and image id."""
    if not isinstance(captions, (list, tuple)) or not captions:
        raise DataError(f"{path}: image id {image_id} has an empty caption list")
    for caption in captions:
        if not isinstance(caption, str):
            raise DataError(f"{path}: image id {image_id}: caption {caption!r} is not a string")
        if not caption.strip():
            raise DataError(f"{path}: image id {image_id}: empty caption")
    return list(captions)


def _entries(path: str, data: Any, key: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: expected a JSON object with a '{key}' list (COCO captions format)")
    return data[key]


def _field(path: str, entry: Any, name: str, what: str) -> Any:
    if not isinstance(entry, dict) or name not in entry:
        raise DataError(f"{path}: {what} {str(entry)[:80]} has no '{name}'")
    return entry[name]


def coco_captions(data: Any, path: str) -> dict:
    """A parsed COCO captions file -> {image id: [captions]} for every image of 'images'."""
    refs: dict = {}
    for image in _entries(path, data, "images"):
        refs[_field(path, image, "id", "image")] = []
    for ann in _entries(path, data, "annotations"):
        image_id = _field(path, ann, "image_id", "annotation")
        caption = _field(path, ann, "caption", f"annotation of image id {image_id}")
        if image_id not in refs:
            raise DataError(f"{path}: annotation refers to image id {image_id}, which is not in 'images'")
        refs[image_id].append(caption)
    for image_id, captions in refs.items():
        check_captions(path, image_id, captions)
    return refs


def check_captions_file(root: str, split: str) -> dict:
    """DataCheck.check: every problem of ROOT/annotations/captions_<split>.json (captions of unknown images,
    empty captions, images without captions) and the images it names under ROOT/images/<split>/."""
    path = os.path.join(root, "annotations", f"captions_{split}.json")
    image_dir = os.path.join(root, "images", split)
    data = read_json(path)
    images, anns = _entries(path, data, "images"), _entries(path, data, "annotations")
    count, problems = {}, []
    for image in images:
        count[_field(path, image, "id", "image")] = 0
    for ann in anns:
        image_id = _field(path, ann, "image_id", "annotation")
        caption = _field(path, ann, "caption", f"annotation of image id {image_id}")
        if image_id not in count:
            problems.append(("caption of an unknown image", f"{path}: a caption of image id {image_id}"))
        elif not isinstance(caption, str) or not caption.strip():
            problems.append(("empty caption", f"{path}: image id {image_id}: caption {caption!r}"))
        else:
            count[image_id] += 1
    problems += [("image without captions", f"{path}: image id {i}") for i, n in count.items() if not n]
    require_folder(image_dir, source=path)
    size = lambda image, key: image[key] if isinstance(image.get(key), int) else None  # noqa: E731
    entries = [(image["id"], inside(image_dir, _field(path, image, "file_name", f"image id {image['id']}"),
                                    context=f"{path}: image id {image['id']}"), size(image, "width"),
                size(image, "height")) for image in images]
    return {"annotations": path, "image_folder": image_dir, "problems": problems, "images": entries,
            "counts": {"images": len(images), "captions": len(anns)}}


def read_coco(annotations: str, image_dir: str) -> list[CaptionRecord]:
    """COCO captions JSON + its image folder -> records in the file's order of 'images'."""
    data = read_json(annotations)
    refs = coco_captions(data, annotations)
    require_folder(image_dir, source=annotations)
    records = []
    for image in data["images"]:
        name = _field(annotations, image, "file_name", f"image id {image['id']}")
        records.append(CaptionRecord(image["id"], inside(image_dir, name, context=f"{annotations}: image id {image['id']}"),
                                     refs[image["id"]]))
    return records


KARPATHY_TRAIN = ("train", "restval")  # the usual Karpathy training set: train + restval


def read_karpathy(path: str, image_root: str, split: str) -> list[CaptionRecord]:
    """Images of one split of a Karpathy split file; "train" also takes "restval"."""
    wanted = KARPATHY_TRAIN if split == "train" else (split,)
    records = []
    for image in _entries(path, read_json(path), "images"):
        image_id = image.get("cocoid", image.get("imgid")) if isinstance(image, dict) else None
        if image_id is None:
            raise DataError(f"{path}: image {str(image)[:80]} has no 'cocoid'")
        if image.get("split") not in wanted:
            continue
        sentences = image.get("sentences")
        raw = [s.get("raw") if isinstance(s, dict) else s for s in sentences] \
            if isinstance(sentences, list) else sentences
        refs = check_captions(path, image_id, raw)
        name = _field(path, image, "filename", f"image id {image_id}")
        relative = os.path.join(image.get("filepath", ""), name) if isinstance(name, str) else name
        records.append(CaptionRecord(image_id, inside(image_root, relative, context=f"{path}: image id {image_id}"), refs))
    return records


def split_records(config: Any, split: str, karpathy_file: str = "") -> list[CaptionRecord]:
    """The records of `split` ("train" | "val") named by the config, before any image is read."""
    d = config.data
    name = d.train_split if split == "train" else d.val_split
    limit = d.max_train_images if split == "train" else d.max_val_images
    if karpathy_file:
        image_root = (d.train_images if split == "train" else d.val_images) or d.root
        records, source = read_karpathy(karpathy_file, image_root, name), karpathy_file
    else:
        annotations = d.train_annotations if split == "train" else d.val_annotations
        images = d.train_images if split == "train" else d.val_images
        if not d.root and not (annotations and images):
            raise ConfigError(f"config key 'data.root': empty; set it to a COCO-layout dataset folder or "
                              f"set data.{split}_annotations and data.{split}_images")
        annotations = annotations or os.path.join(d.root, "annotations", f"captions_{name}.json")
        images = images or os.path.join(d.root, "images", name)
        records, source = read_coco(annotations, images), annotations
    if not records:
        raise DataError(f"{source}: split '{name}' has no images with captions")
    return records[: limit or None]


def load_split(records: Sequence[CaptionRecord], size: int, skip_corrupt: bool = False, decode: str = "once"):
    """The split of `records`, targets {"refs": [...]}, images decoded now or on access (`decode`)."""
    split = image_split([r.path for r in records], [{"refs": list(r.refs)} for r in records],
                        [r.id for r in records], size, decode, skip_corrupt)
    if not len(split):
        folder = os.path.dirname(records[0].path)
        raise DataError(f"{folder}: none of the {len(records)} images could be read")
    return split
