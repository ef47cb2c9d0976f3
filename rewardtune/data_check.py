"""`rewardtune data check`: what a COCO-layout folder holds for a task, and what is wrong with it.

The task reads its own annotation files (its module's DATA_CHECK, a tasks.base.DataCheck) and lists
the images they name; this module reads every one of those images in full (in `workers` processes),
adds what it finds, prints one report and raises DataError with one summary line when anything is wrong.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Optional, Sequence

from .data.files import load_rgb
from .errors import DataError
from .tasks import data_checker

EXAMPLES = 5  # problem lines shown per kind and split
MISSING, UNREADABLE, WRONG_SIZE = "missing image", "unreadable image", "image size differs from the annotation file"


def read_image(entry: tuple) -> Optional[tuple[str, str]]:
    """(image id, path, width, height) -> None when the file decodes at that size, else (kind, line)."""
    image_id, path, width, height = entry
    if not os.path.isfile(path):
        return MISSING, f"{path} (image {image_id})"
    try:
        rgb = load_rgb(path)
    except DataError as e:
        return UNREADABLE, f"{e} (image {image_id})"
    if width is not None and (rgb.shape[1], rgb.shape[0]) != (width, height):
        return WRONG_SIZE, f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, the file says {width}x{height} (image {image_id})"
    return None


def image_problems(entries: Sequence[tuple], workers: int = 0) -> list[tuple[str, str]]:
    """Read every image of `entries` ((id, path, width or None, height or None)) -> its problems, in order."""
    if workers > 0 and len(entries) > 1:
        with ProcessPoolExecutor(workers) as pool:
            found = list(pool.map(read_image, entries, chunksize=64))
    else:
        found = [read_image(e) for e in entries]
    return [p for p in found if p is not None]


def split_report(name: str, result: dict, problems: list[tuple[str, str]]) -> list[str]:
    """The lines that describe one split: what it holds, then each kind of problem with a few examples."""
    counts = ", ".join(f"{n} {what}" for what, n in result["counts"].items())
    lines = [f"{name}: {result['annotations']}: {counts}; images in {result['image_folder']}"]
    by_kind: dict[str, list[str]] = {}
    for kind, line in problems:
        by_kind.setdefault(kind, []).append(line)
    for kind, found in by_kind.items():
        lines.append(f"  {kind} ({len(found)}):")
        lines += [f"    {line}" for line in found[:EXAMPLES]]
        if len(found) > EXAMPLES:
            lines.append(f"    ... and {len(found) - EXAMPLES} more")
    return lines


def check_folder(task: str, root: str, splits: Sequence[str] = (), workers: int = 0) -> list[str]:
    """Check the splits of `root` (default: every split the task finds there) -> the report's lines.

    Raises DataError with one summary line, after the report is printed, when any split has a problem."""
    checker = data_checker(task)  # the task's own reading of its files
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found")
    splits = list(splits) or checker.splits(root)
    if not splits:
        raise DataError(f"{root}: no {task} annotation files in {os.path.join(root, 'annotations')}")
    lines, summary, total = [], [], 0
    for name in splits:
        result = checker.check(root, name)
        problems = list(result["problems"]) + image_problems(result["images"], workers)
        lines += split_report(name, result, problems)
        kinds = Counter(kind for kind, _ in problems)
        total += len(problems)
        if kinds:
            summary.append(f"{name}: " + ", ".join(f"{n} x {kind}" for kind, n in kinds.items()))
    print("\n".join(lines), flush=True)
    if summary:
        raise DataError(f"{root}: {total} problem(s) ({'; '.join(summary)})")
    print(f"{root}: no problems found in {', '.join(splits)}")
    return lines
