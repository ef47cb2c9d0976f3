"""What became of each ground-truth thing: the kinds of error behind PQ things, counted per segment.

PQ says how good a panoptic map is, not what is wrong with it. This module sorts every non-crowd
ground-truth *thing* segment of a prediction into one kind, in this order:
- matched: a prediction of its category matches it (IoU > 0.5): a true positive of `pq_stats`;
- wrong_class: a prediction of another category overlaps it with IoU > 0.5 (right shape, wrong class);
- merged: the prediction that overlaps it most (any category, IoU <= 0.5) covers more than half of it:
  that prediction spills over it, typically joined with a neighbour or the background;
- fragmented: that prediction covers half of it or less (split between predictions, or cut short);
- missed: no prediction overlaps it with IoU >= 0.1.
IoU here is panopticapi's (prediction pixels on ground-truth void leave the union) but ignores the
category, so that a shape found under the wrong class is told apart from one not found. On the
prediction side, `spurious` counts the false-positive thing segments (as `pq_stats` counts them) that
overlap no ground-truth thing with IoU >= 0.1: things where there is none.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .metrics import PQTotals
from .pq import Matching, match_segments

KINDS = ("matched", "wrong_class", "merged", "fragmented", "missed")
MATCH_IOU, OVERLAP_IOU = 0.5, 0.1


@dataclass
class ThingErrors:
    """Counts over a set of images; category ids as in the ground truth. `update` adds a batch."""

    kinds: Counter = field(default_factory=Counter)  # kind -> gt thing segments
    by_category: dict = field(default_factory=dict)  # gt category id -> Counter of kinds
    confusions: Counter = field(default_factory=Counter)  # (gt category, predicted category) of wrong_class
    spurious: int = 0  # false-positive thing predictions on no gt thing
    pq: PQTotals = field(default_factory=PQTotals)  # the PQ counts of the same matching (pq.results: PQ things ...)

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def update(self, preds: Sequence[dict], gts: Sequence[dict], isthing: dict) -> "ThingErrors":
        """Add the kinds of `preds[i]`'s errors against `gts[i]` (panoptic dicts, as `pq_stats` takes them);
        `isthing`: category id -> bool."""
        m = match_segments(preds, gts)
        self.pq.add(m.stats)
        for kinds, spurious in _image_kinds(m, isthing):
            for _, gt_cat, kind, pred_cat in kinds:
                self.kinds[kind] += 1
                self.by_category.setdefault(gt_cat, Counter())[kind] += 1
                if kind == "wrong_class":
                    self.confusions[(gt_cat, pred_cat)] += 1
            self.spurious += spurious
        return self


def thing_errors(preds: Sequence[dict], gts: Sequence[dict], isthing: dict) -> ThingErrors:
    """The kinds of `preds[i]`'s errors against `gts[i]` (ThingErrors.update)."""
    return ThingErrors().update(preds, gts, isthing)


def thing_kinds(preds: Sequence[dict], gts: Sequence[dict], isthing: dict) -> list[dict]:
    """Per image, {gt segment id: its kind}: what became of each of its ground-truth things."""
    return [{sid: kind for sid, _, kind, _ in kinds} for kinds, _ in _image_kinds(match_segments(preds, gts), isthing)]


def _image_kinds(m: Matching, isthing: dict) -> list[tuple[list, int]]:
    """Per image of a matching: ([(gt segment id, gt category, kind, category of the prediction overlapping
    it most)], spurious predictions)."""
    out = []
    for i, (pt, gt) in enumerate(zip(m.pred_tables, m.gt_tables)):
        p, g = len(pt.is_seg), len(gt.is_seg)
        inter = m.inter[i, :p, :g]
        p_area, void_in_pred = inter.sum(1), inter[:, gt.void_col]
        union = p_area[:, None] + gt.area[None, :] - inter - void_in_pred[:, None]
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=(union > 0) & (inter > 0))
        iou[~pt.is_seg] = 0.0
        gt_things = gt.is_seg & ~gt.crowd & np.array([bool(isthing.get(int(c), False)) for c in gt.cat])
        fn = m.fn[i, :g]
        kinds = []
        for j in np.flatnonzero(gt_things):
            best = int(np.argmax(iou[:, j]))
            if not fn[j]:
                kind = "matched"
            elif iou[best, j] > MATCH_IOU:
                kind = "wrong_class"
            elif iou[best, j] >= OVERLAP_IOU:
                kind = "merged" if inter[best, j] > 0.5 * gt.area[j] else "fragmented"
            else:
                kind = "missed"
            kinds.append((int(gt.ids[j]), int(gt.cat[j]), kind, int(pt.cat[best])))
        pred_things = m.fp[i, :p] & np.array([bool(isthing.get(int(c), False)) for c in pt.cat])
        on_thing = (iou[:, gt_things] >= OVERLAP_IOU).any(1) if gt_things.any() else np.zeros(p, bool)
        out.append((kinds, int((pred_things & ~on_thing).sum())))
    return out


def format_errors(rows: Sequence[tuple[str, ThingErrors]], names: dict, top: int = 5) -> str:
    """A table, one row per (label, errors): each kind's count and share of the gt things, spurious
    predictions, and the most frequent confusions."""
    head = ["", *KINDS, "spurious", "gt things"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in rows:
        cells = [f"{e.kinds[k]} ({e.kinds[k] / max(e.total, 1):.1%})" for k in KINDS]
        lines.append("| " + " | ".join([label, *cells, str(e.spurious), str(e.total)]) + " |")
    for label, e in rows:
        pairs = ", ".join(f"{names.get(a, a)} as {names.get(b, b)} {n}" for (a, b), n in e.confusions.most_common(top))
        lines.append(f"{label}: most confused: {pairs or 'none'}")
    return "\n".join(lines)
