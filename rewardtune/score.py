"""`rewardtune score TASK ...`: score standard-format prediction files with the task's metric."""
from __future__ import annotations

import importlib

from .errors import UserError

_NEEDS = {"detection": ("pred", "gt"), "captioning": ("pred", "gt"), "colorization": ("pred", "gt"),
          "panoptic": ("pred_json", "pred_dir", "gt_json", "gt_dir")}


def score(task: str, args: dict) -> dict:
    """Dispatch to the task's `metrics.score_files` / `score_dirs` with the arguments it needs."""
    missing = [f"--{k.replace('_', '-')}" for k in _NEEDS[task] if not args.get(k)]
    if missing:
        raise UserError(f"score {task}: missing {', '.join(missing)}")
    metrics = importlib.import_module(f"rewardtune.tasks.{task}.metrics")
    fn = getattr(metrics, "score_dirs" if task == "colorization" else "score_files")
    return fn(*(args[k] for k in _NEEDS[task]))
