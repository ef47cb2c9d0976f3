"""RUN/metrics.jsonl: one JSON object per logged step, written by training, read by analysis and the report;
with train.tensorboard, the same scalars (and a few drawn val outputs) as TensorBoard events in RUN/tensorboard/."""
from __future__ import annotations

import importlib.util
import json
import math
import os
from typing import Sequence

import numpy as np

from .errors import ConfigError

TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """The writer. On resume, lines after the resumed step (and a line cut short by a crash) are dropped.
    `tensorboard`: also write every record's numbers as TensorBoard scalars (see TensorBoardLog)."""

    def __init__(self, path: str, resume_step: int, enabled: bool, tensorboard: bool = False):
        self.path, self.enabled = path, enabled
        self.tensorboard = (TensorBoardLog(os.path.join(os.path.dirname(path), TENSORBOARD_DIR), resume_step)
                            if enabled and tensorboard else None)
        if enabled and os.path.exists(path):
            with open(path) as f:
                kept = [l for l in f if _logged_step(l) <= resume_step]
            with open(path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.scalars(record)

    def images(self, step: int, images: Sequence[tuple[str, np.ndarray]]) -> None:
        """(tag, HxWx3 uint8) images at `step`: TensorBoard only (metrics.jsonl holds numbers)."""
        if self.tensorboard is not None:
            self.tensorboard.images(step, images)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def check_tensorboard(wanted: bool) -> None:
    """ConfigError, before a run starts, when train.tensorboard is set and the package is not installed."""
    if wanted and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("config key 'train.tensorboard': true needs the tensorboard package "
                          "(pip install 'rewardtune[tensorboard]'), which is not installed")


class TensorBoardLog:
    """RUN/tensorboard/ event files: each metrics.jsonl record's numbers as scalars at its step (the wall-clock
    `time` left out) and images. On resume, the events after the resumed step are purged for readers, as
    metrics.jsonl's lines are."""

    def __init__(self, log_dir: str, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
        self.writer = SummaryWriter(log_dir, purge_step=resume_step + 1)  # also a restart from scratch

    def scalars(self, record: dict) -> None:
        step = int(record.get("step", 0))
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def images(self, step: int, images: Sequence[tuple[str, np.ndarray]]) -> None:
        for tag, image in images:
            self.writer.add_image(tag, np.asarray(image, np.uint8), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line cut short by a crash (so it is dropped)."""
    try:
        return json.loads(line).get("step", 0) if line.endswith("\n") else math.inf
    except json.JSONDecodeError:
        return math.inf


def read_metrics_log(run_dir: str) -> list[dict]:
    """RUN/metrics.jsonl as a list of records ([] when absent); unreadable lines are skipped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [r for r in records if isinstance(r, dict)]
