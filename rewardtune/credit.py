"""Per-item credit assignment (train.credit = "token"), a departure from the paper (docs/method.md).

The paper gives every token of a sample the sample's advantage. Where the reward is a sum over the items
of an output (detection's "map": each box adds its matched class weight or takes its duplicate penalty),
each item's tokens can instead get that item's own contribution minus a leave-one-out baseline: the mean
contribution of the items of the other N - 1 samples of the same image (losses.item_leave_one_out_advantage).
Tokens no item owns (detection: the end token) keep the sequence's leave-one-out advantage.

The task says which tokens each item owns (Task.item_tokens); the reward says what each item contributed
(its part Task ITEM_PART). Nothing here knows what an item is.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .losses import item_leave_one_out_advantage
from .tasks.base import ITEM_PART, Task

def check_credit(task: Task, train) -> None:
    """ConfigError, before anything runs, when train.credit = "token" cannot work with this task."""
    if train.stage == "reward" and train.credit == "token" and task.item_tokens is None:
        raise ConfigError(f"config key 'train.credit': 'token' needs a task that maps each output's items to "
                          f"its tokens (Task.item_tokens); task '{task.name}' has none (use 'sequence')")


def item_contributions(parts: dict, outputs: Sequence[Any], reward_name: str) -> torch.Tensor:
    """The reward's ITEM_PART as FloatTensor[S, K]; ConfigError naming the reward when it has none."""
    if not parts or ITEM_PART not in parts:
        raise ConfigError(f"config key 'train.credit': 'token' needs a reward that splits over items (part "
                          f"'{ITEM_PART}'); reward '{reward_name or 'default'}' does not (use 'sequence')")
    value = torch.as_tensor(parts[ITEM_PART], dtype=torch.float32)
    if value.dim() != 2 or value.shape[0] != len(outputs):
        raise ValueError(f"reward part '{ITEM_PART}': expected [{len(outputs)}, K], got {tuple(value.shape)}")
    return value


def spread_over_tokens(spans: Sequence[np.ndarray], item_adv: torch.Tensor, seq_adv: torch.Tensor,
                       lengths: torch.Tensor, T: int) -> torch.Tensor:
    """Per-token advantages FloatTensor[S, T]: item k's advantage item_adv[s, k] on its tokens spans[s][k]
    ([start, stop)), the sequence's seq_adv[s] on every other token before lengths[s], 0 after."""
    lengths = lengths.cpu()
    valid = torch.arange(T)[None] < lengths[:, None]
    out = torch.where(valid, seq_adv.float().cpu()[:, None].expand(-1, T), torch.zeros(()))
    for s, span in enumerate(spans):
        for k, (start, stop) in enumerate(np.asarray(span, np.int64).reshape(-1, 2)):
            out[s, start:min(int(stop), int(lengths[s]))] = item_adv[s, k]
    return out


def token_advantages(task: Task, outputs: Sequence[Any], parts: dict, seq_adv: torch.Tensor, lengths: torch.Tensor,
                     T: int, reward_name: str = "") -> torch.Tensor:
    """FloatTensor[B*N, T] of per-token advantages for the B*N outputs (N samples per image, in order);
    seq_adv: the sequences' leave-one-out advantages (B, N)."""
    b, n = seq_adv.shape
    contributions = item_contributions(parts, outputs, reward_name)  # (B*N, K)
    spans = [task.item_tokens(o) for o in outputs]
    counts = torch.tensor([len(np.asarray(s).reshape(-1, 2)) for s in spans])
    k = contributions.shape[1]
    if len(counts) and int(counts.max()) > k:
        raise ValueError(f"token credit: an output has {int(counts.max())} items but the reward scored {k}")
    valid = torch.arange(k)[None] < counts[:, None]  # (B*N, K)
    item_adv = item_leave_one_out_advantage(contributions.view(b, n, k), valid.view(b, n, k)).view(b * n, k)
    return spread_over_tokens(spans, item_adv, seq_adv.reshape(-1), lengths, T)
