"""Per-item credit assignment (train.credit = "token"), a departure from the paper (docs/method.md).

The paper gives every token of a sample the sample's advantage: the whole reward, minus the mean reward of
the image's other samples. Where the reward is a sum over the items of an output (detection's "map": each
box adds its matched class weight or takes its duplicate penalty), a token mostly changes the items from
its own on (detection's matching lets a later, better box take an earlier box's match: that effect is left
out), so each item's tokens get the reward still to come from that item on, minus the mean of the
same quantity over the image's other samples (losses.reward_to_go_advantage), and a token no item owns
(detection: the end token) gets that of the item it comes before (for the end token: 0 still to come,
against what the other samples went on to earn). The first item's advantage is the sequence's.

A first form gave each item its own contribution minus the mean item of the other samples; measured on the
faint world it taught the model to stop early (an emitted box worth less than the average box was
punished, though it added reward): docs/results.md#detection.

The task says which tokens each item owns (Task.item_tokens); the reward says what each item contributed
(its part Task ITEM_PART). Nothing here knows what an item is.

train.credit = "local" (also a departure) is for outputs whose items are the cells of a grid over the image
(Task.item_grid: a learned code's grid^2 tokens, each read mostly where it lies). The reward says where in
the image it was earned (its part REGION_PART); each cell's share is the sum of the regions it covers,
each cell's advantage its share minus the mean share of the same cell in the image's other samples, and
a cell's token gets the sum of those advantages over the cells within train.credit_radius of it (a
(2r+1) x (2r+1) block): radius 0 credits a token with its own cell only, a radius of the grid's side or
more gives every token the sequence's advantage (the paper's credit).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .losses import leave_one_out_advantage, reward_to_go_advantage
from .tasks.base import ITEM_PART, REGION_PART, Task


def check_credit(task: Task, train) -> None:
    """ConfigError, before anything runs, when train.credit = "token" or "local" cannot work with this task."""
    if train.stage != "reward" or train.credit == "sequence":
        return
    if task.item_tokens is None:
        raise ConfigError(f"config key 'train.credit': {train.credit!r} needs a task that maps each output's items "
                          f"to its tokens (Task.item_tokens); task '{task.name}' has none (use 'sequence')")
    if train.credit == "local" and not task.item_grid:
        raise ConfigError(f"config key 'train.credit': 'local' needs outputs whose items are the cells of a grid "
                          f"(Task.item_grid: the learned code, task_options.codec = learned); task '{task.name}' "
                          "has none (use 'sequence')")


def item_contributions(parts: dict, outputs: Sequence[Any], reward_name: str) -> torch.Tensor:
    """The reward's ITEM_PART as FloatTensor[S, K]; ConfigError naming the reward when it has none."""
    if not parts or ITEM_PART not in parts:
        raise ConfigError(f"config key 'train.credit': 'token' needs a reward that splits over items (part "
                          f"'{ITEM_PART}'); reward '{reward_name or 'default'}' does not (use 'sequence')")
    value = torch.as_tensor(parts[ITEM_PART], dtype=torch.float32)
    if value.dim() != 2 or value.shape[0] != len(outputs):
        raise ValueError(f"reward part '{ITEM_PART}': expected [{len(outputs)}, K], got {tuple(value.shape)}")
    return value


def spread_over_tokens(spans: Sequence[np.ndarray], position_adv: torch.Tensor, lengths: torch.Tensor,
                       T: int) -> torch.Tensor:
    """Per-token advantages FloatTensor[S, T]: item k's tokens spans[s][k] ([start, stop)) get
    position_adv[s, k]; a token no item owns gets that of the next item starting after it (after the last
    item: position_adv[s, count_s]); 0 from lengths[s] on. position_adv: (S, K + 1)."""
    lengths = lengths.cpu()
    out = torch.zeros(len(spans), T)
    for s, span in enumerate(spans):
        span = np.asarray(span, np.int64).reshape(-1, 2)
        length = int(lengths[s])
        next_item = np.searchsorted(span[:, 0], np.arange(length), side="right")  # items starting at or before t
        owned = np.zeros(length, bool)
        for k, (start, stop) in enumerate(span):
            out[s, start:min(int(stop), length)] = position_adv[s, k]
            owned[start:min(int(stop), length)] = True
        free = np.flatnonzero(~owned)
        out[s, torch.from_numpy(free)] = position_adv[s, torch.from_numpy(next_item[free])]
    return out


def token_advantages(task: Task, outputs: Sequence[Any], parts: dict, n: int, lengths: torch.Tensor,
                     T: int, reward_name: str = "") -> torch.Tensor:
    """FloatTensor[B*N, T] of per-token advantages for the B*N outputs (N = n samples per image, in order)."""
    contributions = item_contributions(parts, outputs, reward_name)  # (B*N, K)
    spans = [task.item_tokens(o) for o in outputs]
    counts = torch.tensor([len(np.asarray(s).reshape(-1, 2)) for s in spans])
    k = contributions.shape[1]
    if len(counts) and int(counts.max()) > k:
        raise ValueError(f"token credit: an output has {int(counts.max())} items but the reward scored {k}")
    b = len(outputs) // n
    valid = torch.arange(k)[None] < counts[:, None]  # (B*N, K)
    position_adv = reward_to_go_advantage(contributions.view(b, n, k), valid.view(b, n, k)).view(b * n, k + 1)
    return spread_over_tokens(spans, position_adv, lengths, T)


def cell_shares(parts: dict, outputs: Sequence[Any], grid: int, reward_name: str) -> torch.Tensor:
    """The reward's REGION_PART pooled into the grid's cells: FloatTensor[S, grid, grid] (region (i, j) of R x R
    goes to cell (i * grid // R, j * grid // R)); ConfigError naming the reward when it has no such part."""
    if not parts or REGION_PART not in parts:
        raise ConfigError(f"config key 'train.credit': 'local' needs a reward that says where in the image it was "
                          f"earned (part '{REGION_PART}'); reward '{reward_name or 'default'}' does not (use 'sequence')")
    regions = torch.as_tensor(parts[REGION_PART], dtype=torch.float32)
    if regions.dim() != 3 or regions.shape[0] != len(outputs) or regions.shape[1] != regions.shape[2]:
        raise ValueError(f"reward part '{REGION_PART}': expected [{len(outputs)}, R, R], got {tuple(regions.shape)}")
    r = regions.shape[1]
    cell = torch.arange(r) * grid // r  # (R,) the cell row (column) of each region row (column)
    index = (cell[:, None] * grid + cell[None, :]).reshape(-1)
    out = torch.zeros(len(outputs), grid * grid).index_add_(1, index, regions.reshape(len(outputs), -1))
    return out.view(len(outputs), grid, grid)


def local_advantages(task: Task, outputs: Sequence[Any], parts: dict, n: int, lengths: torch.Tensor, T: int,
                     radius: int, reward_name: str = "") -> torch.Tensor:
    """FloatTensor[B*N, T] of per-token advantages for train.credit = "local" (the module's docstring)."""
    g = task.item_grid
    shares = cell_shares(parts, outputs, g, reward_name)  # (B*N, g, g)
    if n < 2:
        raise ValueError("local credit needs >= 2 samples per input (a leave-one-out baseline)")
    b = len(outputs) // n
    per_cell = shares.view(b, n, g * g).transpose(1, 2)  # (B, cells, N): each cell against the other samples'
    cell_adv = leave_one_out_advantage(per_cell).transpose(1, 2)  # (B, N, cells)
    r = min(int(radius), g)
    block = torch.ones(1, 1, 2 * r + 1, 2 * r + 1)
    summed = torch.nn.functional.conv2d(cell_adv.reshape(b * n, 1, g, g), block, padding=r).view(b * n, g * g)
    position_adv = torch.cat([summed, torch.zeros(b * n, 1)], 1)  # after the last cell (the end token): 0
    return spread_over_tokens([task.item_tokens(o) for o in outputs], position_adv, lengths, T)
