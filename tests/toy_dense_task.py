"""The toy task (tests/toy_task.py) with a dense target, so it can take a learned code (tasks/learned_codec.py):
the count as a constant 1-channel image (count / 3 everywhere); a prediction reads back as the rounded mean.
`task_options`: {"codec": "grid" | "learned", "code_run": RUN}."""
from __future__ import annotations

import torch

import toy_task
from rewardtune.tasks.base import REGION_PART, DenseTarget
from rewardtune.tasks.learned_codec import with_codec


def to_input(targets) -> torch.Tensor:
    counts = torch.tensor([float(t) for t in targets]).view(-1, 1, 1, 1)
    return (counts / 3.0).expand(-1, 1, 16, 16).contiguous()


def to_outputs(prediction: torch.Tensor) -> list:
    return [int(v) for v in (prediction.mean(dim=(1, 2, 3)) * 3.0).round().clamp(0, 3).tolist()]


def loss(prediction, targets):
    value = torch.nn.functional.mse_loss(prediction, to_input(targets).to(prediction.device))
    return value, {"mse": float(value)}


def regions_reward(outputs, targets):
    """A reward that says where it was earned (REGION_PART, for train.credit = "local"): 0.7 for the right count,
    earned in the top-left quarter, and 0.3 * closeness spread over the three other quarters."""
    right = torch.tensor([float(o == t) for o, t in zip(outputs, targets)])
    close = torch.tensor([1.0 - abs(o - t) / 3.0 for o, t in zip(outputs, targets)])
    regions = torch.stack([0.7 * right, 0.1 * close, 0.1 * close, 0.1 * close], 1).view(-1, 2, 2)
    return 0.7 * right + 0.3 * close, {REGION_PART: regions}


DENSE = DenseTarget(in_channels=1, out_channels=1, to_input=to_input, loss=loss, to_outputs=to_outputs)


def make_task(config, state=None):
    task = toy_task.make_task(config, state)
    task.name, task.dense = "toy_dense_task", DENSE
    task.rewards = {**task.rewards, "regions": regions_reward}
    options = config.task_options or {}
    return with_codec(task, config, options.get("codec", "grid"), options.get("code_run", ""), state)
