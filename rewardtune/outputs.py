"""What the core does with a task's outputs, shared by training, evaluation, analysis and the report.

    resolve_reward  a reward by name: one of the task's, or any `package.module:function`
    score_outputs   every reward of {name: fn} on a list of outputs

Only the Task contract (rewardtune/tasks/base.py, which also holds the codec helpers encode_all,
decode_tokens and decode_all) is used; nothing here imports a task module.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import torch

from .errors import ConfigError
from .tasks.base import ITEM_PART, Task


def resolve_reward(task: Task, name: str) -> Callable:
    """A task reward by name, or any `package.module:function` with the same signature."""
    if not name:
        name = next(iter(task.rewards))
    if name in task.rewards:
        return task.rewards[name]
    if ":" not in name:
        raise ConfigError(f"config key 'train.reward': unknown reward {name!r} for task '{task.name}' "
                          f"(built in: {', '.join(task.rewards)}; or give package.module:function)")
    module_name, fn_name = name.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"config key 'train.reward': cannot import {name!r} ({e})") from None
    if not callable(fn):
        raise ConfigError(f"config key 'train.reward': {name!r} is not callable")
    return fn


def score_outputs(rewards: dict, outputs: Sequence[Any], targets: Sequence[Any]) -> tuple[dict, dict]:
    """Every reward fn of {name: fn} on outputs -> ({name: (n,)}, {"name/part": (n,)} for per-sample parts)."""
    values, parts = {}, {}
    for name, fn in rewards.items():
        result = fn(list(outputs), list(targets))
        total, named = result if isinstance(result, tuple) else (result, {})
        values[name] = torch.as_tensor(total, dtype=torch.float64).reshape(-1).cpu().numpy()
        for part, value in (named or {}).items():
            value = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
            if value.numel() == len(outputs) and part not in (name, ITEM_PART):
                parts[f"{name}/{part}"] = value.cpu().numpy()
    return values, parts
