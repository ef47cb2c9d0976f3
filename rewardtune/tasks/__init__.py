"""The explicit registry of tasks. A task module exposes `make_task(config, state=None) -> Task`
and, optionally, `FILE_SCORER` (a `FileScorer`: what `rewardtune score TASK` needs and calls).

`state` is the task state saved with a checkpoint (vocabulary, class counts, palette...); when it
is None the task builds it from the training data.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Optional

from ..errors import ConfigError

if TYPE_CHECKING:  # the registry stays importable without torch (the CLI lists TASKS in its help)
    from .base import DataCheck, FileScorer, Task

TASKS = {
    "detection": "rewardtune.tasks.detection",
    "captioning": "rewardtune.tasks.captioning",
    "colorization": "rewardtune.tasks.colorization",
    "panoptic": "rewardtune.tasks.panoptic",
}


def task_module(name: str, source: str = "config key 'task'"):
    """The module of task `name`: a built-in name, or the import path of a user module.
    `source` says where the name came from, for the error line."""
    try:
        return importlib.import_module(TASKS.get(name, name))
    except ImportError:
        raise ConfigError(f"{source}: unknown task {name!r} (built in: {', '.join(TASKS)}; "
                          "or the import path of a module with make_task)") from None


def make_task(config, state: Optional[dict] = None) -> Task:
    """Build the task named by `config.task`: a built-in name, or the import path of a user module."""
    return task_module(config.task).make_task(config, state)


def file_scorer(name: str) -> FileScorer:
    """The `FileScorer` of task `name` (`rewardtune score`); ConfigError if its module offers none."""
    scorer = getattr(task_module(name, "score"), "FILE_SCORER", None)
    if scorer is None or not callable(getattr(scorer, "score", None)):
        raise ConfigError(f"score: task {name!r} offers no file scoring (its module defines no FILE_SCORER, "
                          "a rewardtune.tasks.base.FileScorer)")
    return scorer


def data_checker(name: str) -> DataCheck:
    """The `DataCheck` of task `name` (`rewardtune data check`); ConfigError if its module offers none."""
    checker = getattr(task_module(name, "data check --task"), "DATA_CHECK", None)
    if checker is None or not callable(getattr(checker, "check", None)):
        raise ConfigError(f"data check: task {name!r} offers no data check (its module defines no DATA_CHECK, "
                          "a rewardtune.tasks.base.DataCheck)")
    return checker
