"""Hedge proposals (`train.proposal_weight > 0`; a departure from the paper, docs/method.md#detection).

COCO mAP pays for a box emitted a second time with its second most likely class when the first call
is wrong, and the released reward pays for it too (a wrong-class box costs nothing), but sampling
almost never proposes one: it would have to repeat a box's four coordinates at a low probability. A
hedge proposal builds that sequence from a sample: after each of its boxes (those with the closest
class calls first, while the sequence stays within `max_boxes`), the same coordinates again with the
most likely class other than the one drawn, and the same conf token. The loop scores each proposal
with the reward and imitates the ones that beat the sample mean of their image (steps.py).

With the codec's `hedge_token` a hedge is one token, the box's conf token set to "wrong" (codec.py):
`hedge_token_proposal` sets it on every box, without using up any room under max_boxes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .headroom import second_class


def hedge_proposal(codec, tokens: Sequence[int], step_log_probs: torch.Tensor) -> Optional[list[int]]:
    """The hedged copy of one sampled sequence (tokens up to its end token; `step_log_probs` [T, V], row t
    the distribution token t was drawn from) -> token list ending with the end token, or None when there
    is nothing to hedge (no box, one class, or no room under max_boxes)."""
    toks = np.asarray([int(t) for t in tokens], np.int64)
    starts = codec._read_groups(toks)
    room = codec.max_boxes - len(starts)
    if len(starts) == 0 or room <= 0 or codec.num_classes < 2:
        return None
    lo, hi = codec.class_token, codec.class_token + codec.num_classes
    rows = step_log_probs[torch.as_tensor(starts + 4)][:, lo:hi].double().numpy()  # (k, C)
    second, second_lp, picked = second_class(rows, toks[starts + 4] - lo)
    margin = picked - second_lp
    hedged = set(np.argsort(margin, kind="stable")[:room].tolist())
    out: list[int] = []
    for i, s in enumerate(starts):
        group = toks[s:s + 6].tolist()
        out += group
        if i in hedged:
            out += group[:4] + [lo + int(second[i]), group[5]]
    return out + [codec.end_token]


def hedge_token_proposal(codec, tokens: Sequence[int], step_log_probs: torch.Tensor) -> Optional[list[int]]:
    """The sample with every box's conf token set to the hedge token (codec.hedge_token) -> token list ending
    with the end token, or None when there is nothing to hedge (no box, one class, or every box hedged)."""
    toks = np.asarray([int(t) for t in tokens], np.int64)
    starts = codec._read_groups(toks)
    if len(starts) == 0 or codec.num_classes < 2 or (toks[starts + 5] == codec.wrong_token).all():
        return None
    out = toks[:int(starts[-1]) + 6].copy()
    out[starts + 5] = codec.wrong_token
    return out.tolist() + [codec.end_token]
