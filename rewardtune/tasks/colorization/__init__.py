"""Colorization (docs/method.md#colorization): gray image in, colours as palette tokens out, tuned for colorfulness.

    make_task(config)            learns the palette from the training images (k-means, seed 0)
    make_task(config, state)     rebuilds the same task from a checkpoint's state {"palette": [[a, b], ...]}

Options (config.task_options): palette_size (K colours incl. neutral; vocab = K + 1), grid (cells
per side; max_len = grid^2 + 1), fidelity_weight (colorfulness points per dB of PSNR in the
"colorfulness_fidelity" reward), palette_images (the palette is learned from the first N training
images; 0 = all).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ...config import task_options
from ...errors import ConfigError, DataError
from ..base import FileScorer, Task
from ..learned_codec import with_codec
from ...data.files import resize_rgb
from .codec import ColorCodec, ColorTarget, cell_chroma, gray_uint8, kmeans_palette, render, render_outputs
from .data import datasets, load_photos, write_predictions
from .dense import DENSE
from .metrics import score_dirs, split_metrics
from .rewards import colorfulness, colorfulness_fidelity_reward, colorfulness_reward
from .viz import visualize

__all__ = ["ColorizationOptions", "ColorCodec", "ColorTarget", "make_task", "render", "render_outputs",
           "score_dirs", "load_photos", "write_predictions", "learn_palette", "sample_stats"]

# `rewardtune score colorization`: the files it reads and the function that scores them
FILE_SCORER = FileScorer(files=(("pred", "folder of predicted images (or one holding images/), matched by name"),
                                ("gt", "folder of the original colour images")), score=score_dirs)

PALETTE_SEED = 0


@dataclass
class ColorizationOptions:
    palette_size: int = 64  # K palette colours, entry 0 neutral gray; 2..512
    grid: int = 16  # grid x grid chroma cells (16 on 64 x 64 images = 4 x 4 pixel cells)
    fidelity_weight: float = 10.0  # colorfulness points per dB of PSNR in "colorfulness_fidelity"
    palette_images: int = 0  # learn the palette from the first N training images (0 = all of them)
    codec: str = "grid"  # "grid" (the palette grid code above) or "learned": the UViM code of a stage I run
    code_run: str = ""  # with codec "learned": the stage I run folder (read once, by a fresh run)


def options(config: Any) -> ColorizationOptions:
    """Read and check config.task_options; a bad value raises ConfigError naming the key."""
    opts = task_options(ColorizationOptions, config.task_options, "colorization")
    if not 2 <= opts.palette_size <= 512:
        raise ConfigError(f"config key 'task_options.palette_size': must be in 2..512, got {opts.palette_size}")
    if not 1 <= opts.grid <= config.data.image_size:
        raise ConfigError(f"config key 'task_options.grid': must be in 1..data.image_size "
                          f"({config.data.image_size}), got {opts.grid}")
    if opts.palette_images < 0:
        raise ConfigError(f"config key 'task_options.palette_images': must be >= 0, got {opts.palette_images}")
    if not (math.isfinite(opts.fidelity_weight) and opts.fidelity_weight >= 0):
        raise ConfigError(f"config key 'task_options.fidelity_weight': must be a finite number >= 0, "
                          f"got {opts.fidelity_weight}")
    return opts


def learn_palette(targets: Sequence[ColorTarget], grid: int, k: int) -> np.ndarray:
    """k-means (seed PALETTE_SEED) of the training images' cell-mean (a, b) -> palette float32 [k, 2]."""
    if not targets:
        raise DataError("colorization: no training images to learn the colour palette from")
    chunks = [cell_chroma(np.stack([t.rgb for t in targets[i:i + 256]]), grid).reshape(-1, 2).numpy()
              for i in range(0, len(targets), 256)]  # (256 * g * g, 2) each; bounded memory
    return kmeans_palette(np.concatenate(chunks), k, seed=PALETTE_SEED)


def palette_from_state(state: dict, k: int) -> np.ndarray:
    """The checkpointed palette, checked against palette_size."""
    try:
        palette = np.asarray(state.get("palette") if isinstance(state, dict) else None, np.float32)
    except (TypeError, ValueError):
        palette = np.zeros(0, np.float32)
    if palette.ndim != 2 or palette.shape[1:] != (2,) or not np.isfinite(palette).all():
        raise DataError("colorization task state: 'palette' must be a list of [a, b] pairs")
    if len(palette) != k:
        raise ConfigError(f"config key 'task_options.palette_size': {k}, but the checkpoint's palette has "
                          f"{len(palette)} colours")
    return palette


def sample_stats(outputs: Sequence[np.ndarray], targets: Sequence[ColorTarget]) -> dict[str, float]:
    """Mean colorfulness of the rendered samples (logged during tuning)."""
    if len(outputs) == 0:
        return {}
    return {"colorfulness": float(colorfulness(render_outputs(outputs, targets)).mean())}


def make_task(config: Any, state: Optional[dict] = None) -> Task:
    """The colorization Task; without `state` the palette is learned from the training split."""
    opts = options(config)
    splits: dict = {}

    def load() -> dict:
        if not splits:
            splits.update(datasets(config))
        return splits

    if state is None:
        targets = load()["train"].targets
        palette = learn_palette(targets[:opts.palette_images] if opts.palette_images else targets, opts.grid,
                                opts.palette_size)
    else:
        palette = palette_from_state(state, opts.palette_size)
    task = Task(
        name="colorization",
        codec=ColorCodec(palette, opts.grid),
        datasets=load,
        rewards={
            "colorfulness": colorfulness_reward,
            "colorfulness_fidelity": functools.partial(colorfulness_fidelity_reward,
                                                       fidelity_weight=opts.fidelity_weight),
        },
        metrics=split_metrics,
        write_predictions=lambda outputs, targets, ids, out_dir: write_predictions(outputs, ids, out_dir, targets),
        visualize=visualize,
        preprocess=lambda rgb: np.repeat(gray_uint8(rgb)[..., None], 3, axis=-1),
        target_for_image=lambda rgb: ColorTarget.from_rgb(resize_rgb(rgb, config.data.image_size)),
        sample_stats=sample_stats,
        dense=DENSE,
        state={"palette": palette.tolist()},
        primary_metric="colorfulness",
    )
    return with_codec(task, config, opts.codec, opts.code_run, state)
