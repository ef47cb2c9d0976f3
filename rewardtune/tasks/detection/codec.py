"""Boxes <-> tokens: six tokens a box, `[ymin, xmin, ymax, xmax, class, conf]`, then an end token.

Vocabulary (B = bins, C = classes):
    0 .. B-1            coordinate bins; a coordinate v in [0, 1] -> round(v * (B - 1))
    B .. B+C-1          class tokens (contiguous class index c -> B + c)
    B+C, B+C+1, B+C+2   confidence tokens (no-object, wrong, right); the IoU-confidence loss puts
                        the soft target (0, 1 - IoU, IoU) over them (docs/method.md#detection)
    B+C+3               end token
Ground-truth boxes are always encoded with the "right" conf token. The no-object conf token, like
the end token, ends a sequence (docs/method.md#detection; the paper: "an end token (or the empty-box conf token) ends the
sequence"); the released big_vision code uses it for padding boxes.
The decoder reads a "wrong" conf token back as "right" (`read_back`): MLE only ever shows it
"right", and a box's score must not change the boxes that follow (what it changed: docs/results.md#medium-world).

With `hedge_token` (a departure from the paper, docs/method.md#detection) the conf token is no score but a
decision: "wrong" reads as *hedge*, "emit this box twice: with its class and with the most likely other
class of the distribution its class token was drawn from". One token the sampler can draw stands for a
hedged box, so reward tuning can learn when to hedge (a hedge repeated token by token is a 6-token event
sampling almost never finds). The second class needs that distribution: `decode` without step log-probs
reads a hedge as a plain box; `reads_step_log_probs` tells the core to pass them.

With `hedge_all` (also a departure) every box is read as hedged, whatever its conf token: the post-hoc hedge
(headroom.hedge) as a way of decoding, for any model (an MLE model never hedges itself). Ranked by the box
verifier, which scores each copy with its own class, it is the strongest decoding we measured on the faint
world (docs/results.md#faint-world).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .headroom import hedge_copies
from .score_head import box_features, learned_scores
from .verifier import from_state, verifier_scores

BOX_ORDERS = ("random", "canonical")
SCORES = ("expected_iou", "token_prob", "learned", "verifier")


class DetectionCodec:
    """Encodes detection targets as token sequences and decodes any token sequence into boxes."""

    def __init__(self, num_classes: int, bins: int = 64, max_boxes: int = 12, box_order: str = "random",
                 score: str = "token_prob", score_head: Optional[dict] = None, hedge_token: bool = False,
                 verifier: Optional[dict] = None, hedge_all: bool = False):
        if num_classes < 1 or bins < 2 or max_boxes < 1:
            raise ValueError(f"DetectionCodec: need num_classes >= 1, bins >= 2, max_boxes >= 1, got "
                             f"{num_classes}, {bins}, {max_boxes}")
        if box_order not in BOX_ORDERS or score not in SCORES:
            raise ValueError(f"DetectionCodec: box_order {box_order!r} / score {score!r} not in "
                             f"{BOX_ORDERS} / {SCORES}")
        self.num_classes, self.bins, self.max_boxes = num_classes, bins, max_boxes
        if (hedge_token or hedge_all) and score not in ("token_prob", "verifier"):
            raise ValueError(f"DetectionCodec: hedge_token / hedge_all needs score 'token_prob' or 'verifier', got "
                             f"{score!r}")
        self.box_order, self.score = box_order, score
        self.hedge_token, self.hedge_all = hedge_token, hedge_all
        # a hedge's second class comes from the class token's distribution
        self.reads_step_log_probs = hedge_token or hedge_all
        self.score_head = score_head  # the fitted learned score (score_head.py), None until calibrated
        self.verifier = from_state(verifier)  # the fitted box verifier (verifier.py), None until calibrated
        self.class_token = bins  # first class token
        self.no_object_token = bins + num_classes
        self.wrong_token = bins + num_classes + 1
        self.right_token = bins + num_classes + 2
        self.end_token = bins + num_classes + 3
        self.vocab_size = bins + num_classes + 4
        self.max_len = 6 * max_boxes + 1

    # -- encoding ------------------------------------------------------------------------------
    def quantize(self, coords: np.ndarray) -> np.ndarray:
        """Coordinates in [0, 1] -> int64 bins in [0, B-1] (values outside [0, 1] are clipped)."""
        coords = np.nan_to_num(np.asarray(coords, np.float64), nan=0.0)
        return np.clip(np.rint(coords * (self.bins - 1)), 0, self.bins - 1).astype(np.int64)

    def dequantize(self, bins: np.ndarray) -> np.ndarray:
        return (np.asarray(bins, np.float64) / (self.bins - 1)).astype(np.float32)

    def boxes_from_bins(self, bins: np.ndarray) -> np.ndarray:
        """Coordinate bins [k, 4] -> float32 boxes [k, 4] in [0, 1], corners ordered (min, then max)."""
        coords = self.dequantize(np.asarray(bins).reshape(-1, 4))
        return np.concatenate([np.minimum(coords[:, :2], coords[:, 2:]),
                               np.maximum(coords[:, :2], coords[:, 2:])], axis=1).astype(np.float32)

    def encode(self, target: dict, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """{"boxes": [m, 4] (ymin, xmin, ymax, xmax) in [0, 1], "classes": [m]} -> LongTensor[6k + 1].

        Random order draws a permutation from `rng` (a fresh generator when None); canonical order
        sorts by ymin, then xmin (then the other fields, so the order is a function of the tokens).
        Boxes past `max_boxes` are dropped after ordering.
        """
        boxes = np.asarray(target["boxes"], np.float64).reshape(-1, 4)
        classes = np.asarray(target["classes"], np.int64).reshape(-1)
        q = self.quantize(boxes)  # (m, 4)
        q = np.concatenate([np.minimum(q[:, :2], q[:, 2:]), np.maximum(q[:, :2], q[:, 2:])], axis=1)
        if self.box_order == "random":
            order = (rng if rng is not None else np.random.default_rng()).permutation(len(q))
        else:
            order = np.lexsort((classes, q[:, 3], q[:, 2], q[:, 1], q[:, 0]))
        order = order[: self.max_boxes]
        groups = np.empty((len(order), 6), np.int64)  # (k, 6)
        groups[:, :4] = q[order]
        groups[:, 4] = self.class_token + classes[order]
        groups[:, 5] = self.right_token
        return torch.from_numpy(np.concatenate([groups.reshape(-1), [self.end_token]]))

    # -- decoding ------------------------------------------------------------------------------
    def _read_groups(self, toks: np.ndarray) -> np.ndarray:
        """-> start positions of the well-formed box groups before the end of the sequence."""
        starts = []
        B, C = self.bins, self.num_classes
        for p in range(0, len(toks) - 5, 6):
            g = toks[p:p + 6]
            if g[0] == self.end_token:
                break
            coords_ok = bool(np.all((g[:4] >= 0) & (g[:4] < B)))
            class_ok = B <= g[4] < B + C
            if not (coords_ok and class_ok and g[5] in (self.wrong_token, self.right_token)):
                break  # malformed group or no-object conf: the sequence ends here
            starts.append(p)
        return np.asarray(starts, np.int64)

    def decode(self, tokens: Sequence[int], step_log_probs: Optional[torch.Tensor] = None,
               image: Optional[torch.Tensor] = None) -> dict:
        """Any token sequence -> {"boxes" [k, 4], "classes", "scores", "score_iou", "score_prob",
        "conf_pos"}, and for the learned score with `step_log_probs` also "features" [k, F] and "score_learned"; reading stops
        at the end token, a no-object conf or the first malformed group.

        `step_log_probs`: FloatTensor[T, V], row t the distribution token t was drawn from. Scores:
        expected IoU = p(right) / (p(wrong) + p(right)) at the conf token; token probability =
        exp(mean log-prob of the 5 coordinate/class tokens) (a box repeating an earlier box's coordinates: see
        `_score_repeats`); both 1 without `step_log_probs`; the
        learned score (score_head.py) of the fitted head, token probability until one is fitted; the verifier
        score (verifier.py, "score_verifier") of the fitted net on the boxes' crops of `image` (FloatTensor[3, S, S],
        what the model saw) with `step_log_probs`, token probability until one is fitted or without the image.
        `scores` holds the one named by the codec's `score`. With `hedge_token` and `step_log_probs`, each box
        whose conf token is "wrong" (with `hedge_all`: every box) is followed by its copy with the second most
        likely class (`_add_hedges`); "hedged" (bool[k']) marks the copies.
        """
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().reshape(-1).tolist()
        values = [int(t) for t in tokens]
        toks = np.asarray([v if abs(v) < 2**62 else -1 for v in values], np.int64)  # (T,)
        starts = self._read_groups(toks)
        groups = toks[starts[:, None] + np.arange(6)] if len(starts) else np.zeros((0, 6), np.int64)
        boxes = self.boxes_from_bins(groups[:, :4])
        score_iou, score_prob = self._scores(groups, starts, step_log_probs)
        out = {
            "boxes": boxes.reshape(-1, 4),  # (k, 4) ymin, xmin, ymax, xmax in [0, 1]
            "classes": (groups[:, 4] - self.class_token).astype(np.int64),
            "scores": score_iou if self.score == "expected_iou" else score_prob,
            "score_iou": score_iou,
            "score_prob": score_prob,
            "conf_pos": (starts + 5).astype(np.int64),
        }
        if step_log_probs is not None and self.score == "learned":  # only the learned score reads the features
            out["features"] = box_features(self, groups, starts, step_log_probs.detach().float().cpu())
            out["scores"] = out["score_learned"] = learned_scores(self.score_head, out["features"], score_prob)
        if self.hedge_token or self.hedge_all:
            out["hedged"] = np.zeros(len(groups), bool)
            hedges = np.ones(len(groups), bool) if self.hedge_all else groups[:, 5] == self.wrong_token
            if step_log_probs is not None and self.num_classes > 1 and hedges.any():
                out = self._add_hedges(out, hedges, step_log_probs.detach().float().cpu())
        # like the learned score, only when scores are asked for (step log-probs given: eval, predict, analyze), not
        # on the reward step's samples, whose rewards do not read scores; hedge copies included
        if self.score == "verifier" and self.verifier is not None and image is not None and step_log_probs is not None:
            out["scores"] = out["score_verifier"] = verifier_scores(self.verifier, image, out["boxes"], out["classes"])
        return out

    def _add_hedges(self, out: dict, hedges: np.ndarray, lp: torch.Tensor) -> dict:
        """`out` with, after each box marked in `hedges` (bool[k]), its copy with the most likely class
        other than the emitted one, scored by token probability with that class's log-prob swapped in (what
        the headroom's post-hoc `hedge` gives every box). Same conf_pos: the copy's tokens are its box's."""
        rows = lp[torch.as_tensor(np.asarray(out["conf_pos"]) - 1)][:, self.class_token:self.class_token + self.num_classes]
        second, score = hedge_copies(rows.double().numpy(), out["classes"], out["score_prob"])
        copy = {"classes": second, "score_prob": score.astype(np.float32), "hedged": np.ones(len(second), bool)}
        order = []
        for i in range(len(hedges)):  # row i of the box, then row k + i of its copy
            order += [i, len(hedges) + i] if hedges[i] else [i]
        merged = {}
        for key in ("boxes", "classes", "score_iou", "score_prob", "conf_pos", "hedged"):
            merged[key] = np.concatenate([out[key], copy.get(key, out[key])])[order]
        merged["scores"] = merged["score_prob"]
        return merged

    def _scores(self, groups: np.ndarray, starts: np.ndarray,
                step_log_probs: Optional[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        k = len(groups)
        if step_log_probs is None or k == 0:
            return np.ones(k, np.float32), np.ones(k, np.float32)
        lp = step_log_probs.detach().float().cpu()
        if lp.dim() != 2 or lp.shape[0] < starts[-1] + 6 or lp.shape[1] < self.vocab_size:
            raise ValueError(f"decode: step_log_probs has shape {tuple(lp.shape)}; need "
                             f"[>= {int(starts[-1]) + 6}, >= {self.vocab_size}] for these tokens")
        pos = torch.from_numpy(starts[:, None] + np.arange(6))  # (k, 6)
        picked = lp[pos, torch.from_numpy(groups)].numpy().astype(np.float64)  # (k, 6) log p of each token
        score_prob = np.exp(picked[:, :5].mean(axis=1))
        self._score_repeats(groups, pos, lp, picked, score_prob)
        conf = lp[pos[:, 5]].numpy().astype(np.float64)  # (k, V)
        with np.errstate(invalid="ignore", over="ignore"):
            score_iou = 1.0 / (1.0 + np.exp(conf[:, self.wrong_token] - conf[:, self.right_token]))
        return (np.nan_to_num(score_iou, nan=0.0).astype(np.float32),
                np.nan_to_num(score_prob, nan=0.0).astype(np.float32))

    def _score_repeats(self, groups: np.ndarray, pos: torch.Tensor, lp: torch.Tensor, picked: np.ndarray,
                       score_prob: np.ndarray) -> None:
        """Token probability of a box that repeats an earlier box's four coordinates (a hedge, proposals.py), in
        place: the first box's coordinate log-probs with the repeat's class read from the first box's class
        distribution (the model's belief about that object; the repeat's own class token says only which
        other class to emit). A repeat of the same class is a duplicate: score 0."""
        for k in range(1, len(groups)):
            same = np.flatnonzero((groups[:k, :4] == groups[k, :4]).all(1))
            if len(same) == 0:
                continue
            j = int(same[0])
            if (groups[same, 4] == groups[k, 4]).any():
                score_prob[k] = 0.0
                continue
            class_lp = float(lp[pos[j, 4], int(groups[k, 4])])
            score_prob[k] = np.exp((picked[j, :4].sum() + class_lp) / 5.0)

    def kl_exempt(self) -> Optional[torch.Tensor]:
        """BoolTensor[max_len]: with `hedge_token`, the conf positions, left out of the KL term to the MLE
        reference (train.kl_weight): the hedge is a decision the reference never learned (its conf target was
        always "right"), so the KL keeps the boxes near the reference and leaves the hedges to the reward.
        None without the hedge token."""
        if not self.hedge_token:
            return None
        return torch.arange(self.max_len) % 6 == 5

    def read_back(self) -> torch.Tensor:
        """LongTensor[V]: the token the decoder reads after each token; "wrong" is read as "right"."""
        table = torch.arange(self.vocab_size)
        table[self.wrong_token] = self.right_token
        return table

    def grammar(self) -> torch.Tensor:
        """BoolTensor[max_len, V]: bins (or the end token) at p%6 == 0, bins at 1..3, a class at 4,
        "wrong" or "right" at 5; the last position: end only.

        No-object is not allowed at 5: the end token already ends a sequence, MLE never shows
        no-object, and once the IoU-confidence loss moves conf mass it drew no-object in 13 % of
        the samples (crowded world, recall stage), cutting them short. `decode` still reads it."""
        g = torch.zeros(self.max_len, self.vocab_size, dtype=torch.bool)
        slot = torch.arange(self.max_len) % 6
        g[slot < 4, : self.bins] = True
        g[slot == 0, self.end_token] = True
        g[slot == 4, self.class_token:self.no_object_token] = True
        g[slot == 5, self.wrong_token:self.end_token] = True
        g[-1] = False
        g[-1, self.end_token] = True
        return g
