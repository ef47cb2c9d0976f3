"""Greedy outputs of each run on the same val images, drawn by the task's `visualize`; for a dense task, first
the truth through the code (what the code says at best).

Task-agnostic: only the Task contract is used (datasets()["val"], visualize, rewards). Runs that
share a task and data config share one loaded split, so the images are the same objects.
"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .. import checkpoint
from ..errors import UserError
from ..evaluate import load_run, predict_split
from ..outputs import score_outputs
from ..tasks.base import decode_tokens, encode_all

MAX_WIDTH = 768  # drawn images wider than this are shrunk (keeps the report small)
MIN_SIDE = 128  # smaller ones are enlarged by an integer factor (pixels stay sharp)


@dataclass
class Cell:
    png: Optional[str] = None  # base64 PNG
    text: Optional[str] = None  # the output as text when it is text (a caption)
    rewards: dict = field(default_factory=dict)  # {reward name: float} of this greedy output
    error: Optional[str] = None


@dataclass
class Column:
    label: str
    cells: list = field(default_factory=list)
    error: Optional[str] = None  # why the run has no gallery (no checkpoint...)
    primary_metric: Optional[str] = None  # the task's validation metric, when the run could be loaded
    checkpoint: Optional[str] = None  # the checkpoint drawn: the run's standing one (checkpoint.standing)
    undefined_metric: Optional[float] = None  # the task's value for "nothing to average" (shown as n/a)


@dataclass
class Gallery:
    ids: list = field(default_factory=list)  # image ids, from the first run that could be loaded
    targets: list = field(default_factory=list)  # target text (references) or None per image
    columns: list = field(default_factory=list)
    # dense tasks (Task.dense): the truth through the first run's code (encoded, decoded with the image), drawn
    # beside the truth as the runs' outputs are: what the code can say at best
    code: Optional[Column] = None


def png_base64(image: np.ndarray) -> str:
    """HxWx3 (or HxW) uint8 -> base64 PNG, shrunk to MAX_WIDTH."""
    pil = Image.fromarray(np.ascontiguousarray(np.asarray(image, np.uint8)))
    if pil.width > MAX_WIDTH:
        pil = pil.resize((MAX_WIDTH, max(1, round(pil.height * MAX_WIDTH / pil.width))), Image.LANCZOS)
    elif max(pil.size) < MIN_SIDE:
        k = -(-MIN_SIDE // max(1, max(pil.size)))
        pil = pil.resize((pil.width * k, pil.height * k), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def as_text(value: Any) -> Optional[str]:
    """A caption-like value (str, or a list of str) as text; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return " | ".join(value)
    if isinstance(value, dict):
        for key in ("caption", "captions", "text"):
            if key in value:
                return as_text(value[key])
    return None


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """FloatTensor[3, H, W] in [0, 1] -> HxWx3 uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _draw(task, image: np.ndarray, output: Any, target: Any, rewards: dict) -> Cell:
    cell = Cell(text=as_text(output), rewards=rewards)
    try:
        cell.png = png_base64(task.visualize(image, output, target))
    except Exception as e:  # a drawing bug must not lose the whole report
        cell.error = f"visualize failed: {type(e).__name__}: {e}"
    return cell


def run_column(run_dir: str, label: str, images: int, splits: dict, gallery: Gallery) -> Column:
    """Greedy-decode the first `images` val images of a run and draw them."""
    column = Column(label)
    try:
        column.checkpoint = checkpoint.standing(run_dir)
        config, task, model = load_run(run_dir, column.checkpoint)
    except UserError as e:
        column.error = str(e)
        return column
    column.primary_metric, column.undefined_metric = task.primary_metric, task.undefined_metric
    d = config.to_dict()
    key = json.dumps([d.get("task"), d.get("data"), d.get("task_options")], sort_keys=True, default=str)
    if key not in splits:
        splits[key] = task.datasets()["val"]
    split = splits[key]
    indices = range(min(images, len(split)))
    outputs, targets, ids = predict_split(model, task, split, indices)
    try:
        rewards, _ = score_outputs(task.rewards, outputs, targets)
    except Exception:  # rewards are a bonus in the gallery
        rewards = {}
    if not gallery.ids:
        gallery.ids, gallery.targets = list(ids), [as_text(t) for t in targets]
    for row, i in enumerate(indices):
        per = {name: float(v[row]) for name, v in rewards.items()}
        column.cells.append(_draw(task, to_uint8(split[i].image), outputs[row], targets[row], per))
    if gallery.code is None and getattr(task, "dense", None) is not None:
        gallery.code = code_column(task, split, indices)
    return column


def code_column(task, split, indices) -> Column:
    """The truth of each image encoded and decoded (with the image) by the task's codec, drawn and scored."""
    column = Column("truth through the code", primary_metric=task.primary_metric,
                    undefined_metric=task.undefined_metric)
    images, targets, _ = split.batch(list(indices))
    outputs = decode_tokens(task.codec, [t.tolist() for t in encode_all(task.codec, targets)], images)
    try:
        rewards, _ = score_outputs(task.rewards, outputs, targets)
    except Exception:  # rewards are a bonus in the gallery
        rewards = {}
    for row in range(len(targets)):
        per = {name: float(v[row]) for name, v in rewards.items()}
        column.cells.append(_draw(task, to_uint8(images[row]), outputs[row], targets[row], per))
    return column


def build_gallery(run_dirs: Sequence[str], labels: Sequence[str], images: int = 8) -> Gallery:
    """Columns of drawn greedy outputs, one per run, rows the same val images."""
    gallery, splits = Gallery(), {}
    for run_dir, label in zip(run_dirs, labels):
        gallery.columns.append(run_column(run_dir, label, images, splits, gallery))
    return gallery
