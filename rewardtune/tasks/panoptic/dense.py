"""The panoptic target as pixels, for UViM's learned code (tasks.base.DenseTarget, train.stage = "codec").

Every pixel has a content token of the grid codec's vocabulary at one pixel per cell (codec.py with
grid = image size): void, a stuff class, or a thing class's instance slot, slots given per class by first
raster appearance, crowd and unknown segments void, instances beyond max_instances void. A token is split
into two labels:
    semantic  0 void, 1 .. n_stuff stuff classes, 1 + n_stuff + k thing class k      (n_sem channels)
    slot      0 none (void and stuff), 1 .. max_instances the instance slot           (1 + max_instances)
In: the one-hot of both groups, stacked (n_sem + 1 + max_instances channels). Out: logits of the same
groups. Loss: per pixel, the cross-entropy of the semantic class plus, on thing pixels, the cross-entropy of
the slot; thing pixels weigh THING_WEIGHT times a stuff or void pixel (things are a small share of the pixels
and the hard part: unweighted, a first stage I run classified 16 % of thing pixels right at step 250, 98 % of
stuff pixels); the mean over all pixels (so equal micro-batches and ranks add up to the whole batch's mean).
Outputs: the semantic argmax; a thing pixel takes its best slot among 1 .. max_instances; each (class, slot)
present is one segment, as the grid codec's decode builds them (same ids, same fields). Segments smaller than
MIN_AREA_FRACTION of the image (16 px at 64 x 64) become void: a decoder's stray pixels are not segments
(panoptic post-processing commonly drops them; every truth segment of the shapes worlds is larger).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..base import DenseTarget
from .codec import PanopticCodec


THING_WEIGHT = 3.0
MIN_AREA_FRACTION = 1 / 256


class PanopticDense:
    """Panoptic targets <-> per-pixel (semantic, slot) labels; `target()` binds it as a DenseTarget."""

    def __init__(self, categories: Sequence[dict], max_instances: int, image_size: int):
        self.pixels = PanopticCodec(categories, image_size, max_instances, image_size)  # one cell per pixel
        c = self.pixels
        self.slots, self.size = c.slots, c.image_size
        n_stuff, n_things = len(c.stuff), len(c.things)
        self.n_sem = 1 + n_stuff + n_things
        self.channels = self.n_sem + 1 + self.slots
        # content token -> (semantic label, slot label)
        tokens = np.arange(c.end_token)
        thing = np.maximum(tokens - 1 - n_stuff, 0)
        is_thing = c.token_isthing[:c.end_token] == 1
        self.sem_of_token = torch.from_numpy(np.where(is_thing, 1 + n_stuff + thing // self.slots, tokens))
        self.slot_of_token = torch.from_numpy(np.where(is_thing, 1 + thing % self.slots, 0))
        # (semantic label, slot label) -> content token; a thing class with slot 0 reads as its first slot
        table = np.repeat(np.arange(self.n_sem)[:, None], 1 + self.slots, axis=1)
        for k in range(n_things):
            first = 1 + n_stuff + k * self.slots
            table[1 + n_stuff + k] = [first] + list(range(first, first + self.slots))
        self.token_of = torch.from_numpy(table)

    def labels(self, targets: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets -> (semantic LongTensor[B, S, S], slot LongTensor[B, S, S])."""
        tokens = []
        for t in targets:
            ids = np.asarray(t["map"])
            if ids.shape != (self.size, self.size):
                raise ValueError(f"panoptic target map of shape {ids.shape}, expected the model's "
                                 f"{self.size}x{self.size}")
            tokens.append(self.pixels.encode(t)[:-1].view(self.size, self.size))
        tokens = torch.stack(tokens)
        return self.sem_of_token[tokens], self.slot_of_token[tokens]

    def to_input(self, targets: Sequence[dict]) -> torch.Tensor:
        sem, slot = self.labels(targets)
        one_hot = torch.cat([F.one_hot(sem, self.n_sem), F.one_hot(slot, 1 + self.slots)], dim=-1)
        return one_hot.permute(0, 3, 1, 2).float()

    def loss(self, prediction: torch.Tensor, targets: Sequence[dict]) -> tuple[torch.Tensor, dict]:
        sem, slot = (x.to(prediction.device) for x in self.labels(targets))
        logits = prediction.float()
        sem_ce = F.cross_entropy(logits[:, :self.n_sem], sem, reduction="none")
        slot_ce = F.cross_entropy(logits[:, self.n_sem:], slot, reduction="none") * (slot > 0)
        weight = torch.where(slot > 0, THING_WEIGHT, 1.0)
        loss = ((sem_ce + slot_ce) * weight).mean()
        with torch.no_grad():
            right = logits[:, :self.n_sem].argmax(1) == sem
        return loss, {"semantic_loss": sem_ce.detach().mean().item(), "slot_loss": slot_ce.detach().mean().item(),
                      "pixel_accuracy": float(right.float().mean())}

    def token_map(self, prediction: torch.Tensor) -> torch.Tensor:
        """Logits [B, channels, S, S] -> content tokens LongTensor[B, S, S] (a thing pixel's best slot >= 1)."""
        prediction = prediction.detach().float().cpu()
        sem = prediction[:, :self.n_sem].argmax(1)
        slot = prediction[:, self.n_sem + 1:].argmax(1) + 1
        return self.token_of[sem, slot]

    def to_outputs(self, prediction: torch.Tensor) -> list:
        return [self.pixels.output_of(self.drop_small(ids.numpy().astype(np.int32))) for ids in self.token_map(prediction)]

    def drop_small(self, ids: np.ndarray) -> np.ndarray:
        """Content tokens [S, S] with every segment under MIN_AREA_FRACTION of the image set to void (0)."""
        counts = np.bincount(ids.reshape(-1), minlength=self.pixels.vocab_size)
        small = counts < max(1, round(MIN_AREA_FRACTION * ids.size))
        small[0] = False
        return np.where(small[ids], 0, ids).astype(np.int32)

    def target(self) -> DenseTarget:
        return DenseTarget(in_channels=self.channels, out_channels=self.channels, to_input=self.to_input,
                           loss=self.loss, to_outputs=self.to_outputs)
