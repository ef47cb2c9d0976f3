"""`rewardtune score TASK ...`: score standard-format prediction files with the task's metric.

What files a task needs and the function that scores them come from the task module's `FILE_SCORER`
(rewardtune.tasks.base.FileScorer), so a user's task is scored as the built-in ones are.
"""
from __future__ import annotations

from .errors import UserError
from .tasks import file_scorer


def option(name: str) -> str:
    """The command-line option of a scorer's file name: "pred_json" -> "--pred-json"."""
    return "--" + name.replace("_", "-")


def score(task: str, args: dict) -> dict:
    """Score the files of `args` ({file name: path}, e.g. {"pred": ..., "gt": ...}) with task `task`'s scorer."""
    scorer = file_scorer(task)
    missing = [option(name) for name, _ in scorer.files if not args.get(name)]
    if missing:
        raise UserError(f"score {task}: missing {', '.join(missing)}")
    return scorer.score(*(args[name] for name, _ in scorer.files))
