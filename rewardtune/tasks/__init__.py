"""The explicit registry of tasks. A task module exposes `make_task(config, state=None) -> Task`.

`state` is the task state saved with a checkpoint (vocabulary, class counts, palette...); when it
is None the task builds it from the training data.
"""
from __future__ import annotations

import importlib
from typing import Optional

from ..errors import ConfigError
from .base import Task

TASKS = {
    "detection": "rewardtune.tasks.detection",
    "captioning": "rewardtune.tasks.captioning",
    "colorization": "rewardtune.tasks.colorization",
    "panoptic": "rewardtune.tasks.panoptic",
}


def make_task(config, state: Optional[dict] = None) -> Task:
    """Build the task named by `config.task`: a built-in name, or the import path of a user module."""
    name = TASKS.get(config.task, config.task)
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"config key 'task': unknown task {config.task!r} (built in: {', '.join(TASKS)}; "
                          "or the import path of a module with make_task)") from None
    return module.make_task(config, state)
