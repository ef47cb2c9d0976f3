"""PanopticCodec: a panoptic map as one token per cell of a coarse grid, in raster order, then end.

Vocabulary (V = 2 + n_stuff + n_things * S):
    0                                   void (unlabelled)
    1 .. n_stuff                        a stuff class
    1 + n_stuff + k * S + s             thing class k, instance slot s (s < S = max_instances)
    V - 1                               end
Encoding: each cell takes the majority segment of its pixels (ties -> void / the lower segment);
crowd segments and ids missing from segments_info count as void. A class's instances take slots
by first raster appearance on the grid; instances beyond S become void.
Decoding: tokens up to the first end; missing, out-of-range or extra tokens -> void cells; each
non-void token is one segment (segment id = token), upsampled (nearest) to the image size.
The rest of the task sees only encode/decode/grammar, so a learned code (UViM) can replace this.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from .maps import resize_nearest


class PanopticCodec:
    """Grid tokens <-> {"map": int32 [H, W], "segments": [{id, category_id, isthing, iscrowd, area}]}."""

    def __init__(self, categories: Sequence[dict], grid: int, max_instances: int, image_size: int):
        self.categories = [dict(c) for c in categories]
        self.grid, self.slots, self.image_size = int(grid), int(max_instances), int(image_size)
        self.stuff = [int(c["id"]) for c in categories if int(c.get("isthing", 0)) != 1]
        self.things = [int(c["id"]) for c in categories if int(c.get("isthing", 0)) == 1]
        self.vocab_size = 2 + len(self.stuff) + len(self.things) * self.slots
        self.end_token = self.vocab_size - 1
        self.max_len = self.grid * self.grid + 1
        # token -> (category id, isthing); token 0 (void) and end have category -1.
        self.token_category = np.full(self.vocab_size, -1, np.int64)
        self.token_isthing = np.zeros(self.vocab_size, np.int64)
        self.token_category[1:1 + len(self.stuff)] = self.stuff
        for k, cat in enumerate(self.things):
            start = 1 + len(self.stuff) + k * self.slots
            self.token_category[start:start + self.slots] = cat
            self.token_isthing[start:start + self.slots] = 1
        self._stuff_token = {cat: 1 + i for i, cat in enumerate(self.stuff)}
        self._thing_base = {cat: 1 + len(self.stuff) + k * self.slots for k, cat in enumerate(self.things)}

    # ---- encode -------------------------------------------------------------------------------
    def _cell_segments(self, ids: np.ndarray, segments: Sequence[dict]) -> tuple[np.ndarray, list[dict]]:
        """(grid x grid majority segment index, 0 = void; the segments indexed 1..M)."""
        usable = [s for s in segments if int(s.get("iscrowd", 0)) != 1
                  and (int(s["category_id"]) in self._stuff_token or int(s["category_id"]) in self._thing_base)]
        known = np.array([int(s["id"]) for s in usable], np.int64)
        order = np.argsort(known, kind="stable")
        flat = ids.reshape(-1).astype(np.int64)
        index = np.zeros(len(flat), np.int64)
        if len(known):
            pos = np.searchsorted(known[order], flat).clip(0, len(known) - 1)
            index = np.where(known[order][pos] == flat, order[pos] + 1, 0)
        g, (h, w) = self.grid, ids.shape
        cell_of = resize_nearest(np.arange(g * g).reshape(g, g), h, w)  # the cell each pixel decodes from
        cell = cell_of.reshape(-1)
        m = len(usable) + 1
        hist = np.bincount(cell * m + index, minlength=g * g * m).reshape(g * g, m)
        return hist.argmax(1), usable

    def encode(self, target: dict, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """Target {"map", "segments"} -> LongTensor[grid*grid + 1] (cells in raster order, then end)."""
        cells, usable = self._cell_segments(np.asarray(target["map"]), target["segments"])
        used_slots: dict[int, int] = {}
        seen: dict[int, int] = {}
        for index in cells.tolist():  # raster order: instance slots by first appearance
            if index == 0 or index in seen:
                continue
            cat = int(usable[index - 1]["category_id"])
            if cat in self._stuff_token:
                seen[index] = self._stuff_token[cat]
            else:
                slot = used_slots.get(cat, 0)
                used_slots[cat] = slot + 1
                seen[index] = self._thing_base[cat] + slot if slot < self.slots else 0
        lut = np.zeros(len(usable) + 1, np.int64)
        for index, token in seen.items():
            lut[index] = token
        tokens = lut[cells]
        return torch.from_numpy(np.append(tokens, self.end_token))

    # ---- decode -------------------------------------------------------------------------------
    def _cell_tokens(self, tokens: Any) -> np.ndarray:
        """Any sequence of ints -> grid*grid valid content tokens (void where missing or invalid)."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().reshape(-1).cpu().numpy()
        try:
            arr = np.asarray(tokens, dtype=np.int64).reshape(-1)
        except (OverflowError, TypeError, ValueError):
            arr = np.array([t if isinstance(t, (int, np.integer)) and 0 <= t < self.vocab_size else 0
                            for t in list(tokens)], np.int64)
        ends = np.nonzero(arr == self.end_token)[0]
        if len(ends):
            arr = arr[: ends[0]]
        n = self.grid * self.grid
        arr = arr[:n]
        arr = np.where((arr >= 0) & (arr < self.end_token), arr, 0)
        return np.pad(arr, (0, n - len(arr)))

    def decode(self, tokens: Sequence[int], step_log_probs: Optional[torch.Tensor] = None,
               image: Optional[torch.Tensor] = None) -> dict:
        """Any token sequence -> a valid panoptic output at image resolution (void where undefined)."""
        grid = self._cell_tokens(tokens).reshape(self.grid, self.grid)
        return self.output_of(resize_nearest(grid, self.image_size, self.image_size).astype(np.int32))

    def output_of(self, ids: np.ndarray) -> dict:
        """A map of content tokens int32 [H, W] (0 = void) -> the output: each token present is one segment
        (segment id = token). The learned code's decoder (dense.py) ends here too."""
        counts = np.bincount(ids.reshape(-1), minlength=self.vocab_size)
        present = np.nonzero(counts[1:])[0] + 1
        segments = [{"id": int(t), "category_id": int(self.token_category[t]),
                     "isthing": int(self.token_isthing[t]), "iscrowd": 0, "area": int(counts[t])}
                    for t in present]
        return {"map": ids, "segments": segments}

    def grammar(self) -> torch.Tensor:
        """BoolTensor[max_len, V]: content tokens (void, stuff, thing slots) at cells, only end at the last."""
        allowed = torch.zeros(self.max_len, self.vocab_size, dtype=torch.bool)
        allowed[:-1, : self.end_token] = True
        allowed[-1, self.end_token] = True
        return allowed
