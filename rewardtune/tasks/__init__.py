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


def _offered(name: str, command: str, attribute: str, kind: str, method: str, what: str):
    """The `attribute` (a tasks.base.`kind` with a callable `method`) of task `name`'s module, which `command`
    needs; ConfigError naming the task if its module offers none."""
    offer = getattr(task_module(name, command), attribute, None)
    if offer is None or not callable(getattr(offer, method, None)):
        raise ConfigError(f"{command.split(' --')[0]}: task {name!r} offers no {what} (its module defines no "
                          f"{attribute}, a rewardtune.tasks.base.{kind})")
    return offer


def file_scorer(name: str) -> FileScorer:
    """The `FileScorer` of task `name` (`rewardtune score`); ConfigError if its module offers none."""
    return _offered(name, "score", "FILE_SCORER", "FileScorer", "score", "file scoring")


def data_checker(name: str) -> DataCheck:
    """The `DataCheck` of task `name` (`rewardtune data check`); ConfigError if its module offers none."""
    return _offered(name, "data check --task", "DATA_CHECK", "DataCheck", "check", "data check")
