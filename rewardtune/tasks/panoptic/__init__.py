"""Panoptic segmentation tuned for panoptic quality (docs/method.md#panoptic-segmentation), scored as panopticapi's `pq_compute`.

Modules: codec (grid tokens), dense (the target as pixels, for a learned code), pq (per-image PQ, the
reward), metrics (dataset PQ, file scorer), io (COCO panoptic JSON + PNG), maps (id maps), viz (overlays).
`make_task` binds them into a Task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ...config import task_options
from ...errors import ConfigError
from ..base import FileScorer, Task
from ..learned_codec import with_codec
from .codec import PanopticCodec
from .dense import PanopticDense
from .io import categories_of, load_split, read_panoptic_json, split_paths, write_panoptic
from .metrics import panoptic_metrics, score_files
from .pq import pq_batch, pq_dataset_reward, pq_image, pq_reward
from .viz import visualize

__all__ = ["PanopticOptions", "PanopticCodec", "make_task", "pq_image", "pq_batch", "pq_reward",
           "score_files", "panoptic_metrics"]

# `rewardtune score panoptic`: the files it reads and the function that scores them
FILE_SCORER = FileScorer(files=(("pred_json", "COCO panoptic JSON of the predictions"),
                                ("pred_dir", "folder of the predicted panoptic PNGs"),
                                ("gt_json", "COCO panoptic JSON of the ground truth"),
                                ("gt_dir", "folder of the ground-truth panoptic PNGs")), score=score_files)


@dataclass
class PanopticOptions:
    grid: int = 16  # cells per side: one token per cell (16 -> 4x4 px cells at 64x64)
    max_instances: int = 8  # instance slots per thing class; more instances are encoded as void
    codec: str = "grid"  # "grid" (the grid code above) or "learned": the UViM code of a stage I run (code_run)
    code_run: str = ""  # with codec "learned": the stage I run folder (read once, by a fresh run)


def parse_options(config) -> PanopticOptions:
    """`config.task_options` -> PanopticOptions, ConfigError naming `task_options.<key>` if out of range."""
    options = task_options(PanopticOptions, config.task_options, "panoptic")
    size = config.data.image_size
    if not 1 <= options.grid <= size:
        raise ConfigError(f"config key 'task_options.grid': must be in 1..data.image_size ({size}), "
                          f"got {options.grid}")
    if options.max_instances < 1:
        raise ConfigError(f"config key 'task_options.max_instances': must be >= 1, got {options.max_instances}")
    return options


def _categories(config, state: Optional[dict]) -> list[dict]:
    if state is None:
        return categories_of(read_panoptic_json(split_paths(config, "train")[0]))
    cats = state.get("categories") if isinstance(state, dict) else None
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise ConfigError("panoptic task state: 'categories' must be a list of {id, name, isthing}")
    return [{"id": int(c["id"]), "name": str(c.get("name", c["id"])), "isthing": int(c.get("isthing", 0))}
            for c in cats]


def sample_stats(outputs: Sequence[dict], targets: Sequence[dict]) -> dict[str, float]:
    """Mean segments per sample (and in the ground truth) and the mean void fraction of samples."""
    if not outputs:
        return {}
    return {"segments": float(np.mean([len(o["segments"]) for o in outputs])),
            "gt_segments": float(np.mean([len(t["segments"]) for t in targets])),
            "void_fraction": float(np.mean([np.mean(np.asarray(o["map"]) == 0) for o in outputs]))}


def make_task(config, state: Optional[dict] = None) -> Task:
    """The panoptic Task; `state` = {"categories": [...]} from a checkpoint, else read from the train JSON."""
    options = parse_options(config)
    categories = _categories(config, state)
    codec = PanopticCodec(categories, options.grid, options.max_instances, config.data.image_size)
    names: dict = {}  # image_id -> (PNG name, original (H, W)), filled when the data is loaded
    cache: dict = {}

    def datasets():
        if not cache:
            cache.update(train=load_split(config, "train", names), val=load_split(config, "val", names))
        return dict(cache)

    task = Task(
        name="panoptic",
        codec=codec,
        datasets=datasets,
        rewards={"pq": pq_reward, "pq_dataset": pq_dataset_reward},
        metrics=lambda outputs, targets, ids: panoptic_metrics(outputs, targets, categories),
        write_predictions=lambda outputs, targets, ids, out_dir: write_panoptic(outputs, ids, out_dir, categories, names),
        visualize=visualize,
        sample_stats=sample_stats,
        dense=PanopticDense(categories, options.max_instances, config.data.image_size).target(),
        state={"categories": categories},
        primary_metric="pq",
    )
    return with_codec(task, config, options.codec, options.code_run, state)
