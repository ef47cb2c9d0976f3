"""The synthetic shapes world, one scene at a time: shapes (things) on textured background regions (stuff).

`make_scene` draws one image with its segments from a random generator and a `WorldLevel`; the files of a
whole world (COCO layout) are written by `rewardtune.data.shapes.generate_shapes`.

Conventions:
- Lengths in a `WorldLevel` (min_size, max_size, grid) are pixels of a 64x64 image; they scale with
  `image_size` (x1.5 at 96, x2 at 128), so a level is the same world at any resolution.
- Shapes are drawn in order; later ones occlude earlier ones. A shape is only placed if no earlier
  shape loses more than `max_overlap` of its area (else it is redrawn elsewhere), so every annotated
  object keeps most of itself visible. max_overlap = 0 keeps boxes at least 1 px apart.
- Boxes, areas and masks describe the VISIBLE part: bbox = tight box of visible pixels [x, y, w, h].
- Every pixel is a thing (segment j = the scene's j-th thing) or stuff (its region's stuff category).
- Levels (`LEVELS`) set how crowded and hard the world is; by default kinds are equally frequent and
  each is drawn as its own shape. `long_tail` makes kind frequencies fall geometrically along KINDS, and
  `confusion` draws the CONFUSABLE kinds as blends of their pair's shapes, so that the pixels tell the
  two apart only part of the time (the "misaligned" level, where MLE and mAP disagree, uses both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .shape_masks import morph_mask, shape_mask
from ..errors import ConfigError

KINDS: list[str] = ["circle", "square", "triangle", "diamond", "cross", "star", "hexagon"]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (50, 175, 60), "blue": (45, 85, 215), "yellow": (235, 215, 45),
    "purple": (140, 60, 185), "orange": (240, 135, 30), "pink": (240, 120, 185), "cyan": (40, 195, 205),
}


@dataclass(frozen=True)
class Stuff:
    colour: tuple[int, int, int]
    texture: str  # gradient | stripes | speckle | waves | blotch
    like: tuple[str, ...] = ()  # shape colours too close to this one (left out unless colour_overlap)


STUFF: dict[str, Stuff] = {
    "sky": Stuff((135, 185, 230), "gradient", ("blue", "cyan")),
    "grass": Stuff((80, 140, 60), "stripes", ("green",)),
    "sand": Stuff((215, 195, 140), "speckle", ("yellow", "orange")),
    "water": Stuff((45, 95, 150), "waves", ("blue", "cyan")),
    "rock": Stuff((115, 105, 100), "blotch"),
    "snow": Stuff((232, 234, 240), "speckle"),
}
STUFF_ID_OFFSET = 101  # stuff category ids are 101, 102, ...; thing ids are 1..len(KINDS)
MAX_OBJECTS = 99  # annotation id = image_id * 100 + j
# Kinds a level with `confusion` > 0 draws as a blend of the pair (see `morph_mask`); the first of each
# pair is the commoner under `long_tail`, whose frequencies fall along KINDS.
CONFUSABLE: tuple[tuple[str, str], ...] = (("circle", "hexagon"), ("square", "diamond"))
_PAIR_OF = {kind: pair for pair in CONFUSABLE for kind in pair}


@dataclass(frozen=True)
class WorldLevel:
    """How crowded and how hard a shapes world is (lengths in pixels of a 64x64 image)."""
    min_objects: int
    max_objects: int
    min_size: float  # shape box side
    max_size: float
    max_overlap: float = 0.0  # most of an object's area later shapes may hide (0: boxes kept apart)
    num_regions: int = 1  # background stuff regions, each a different stuff class
    texture: float = 0.0  # 0..1 strength of the background texture
    colour_overlap: bool = True  # shapes may take colours like those of the background
    grid: float = 0.0  # box edges and sides on a grid of this many px (0 = off)
    shading: float = 0.0  # 0..1 brightness ramp across each shape
    cluster: float = 0.0  # chance a shape is placed against an earlier one (touching)
    faint: float = 0.0  # share of shapes alpha-blended into the background (0 = none)
    faint_min: float = 0.12  # opacity range of a faint shape
    faint_max: float = 0.35
    long_tail: float = 1.0  # KINDS[0] is this many times as frequent as KINDS[-1], geometric between (1 = even)
    confusion: float = 0.0  # share of each CONFUSABLE kind's shapes whose look either kind of its pair draws

    def __post_init__(self):
        rules = [
            ("min_objects", 0 <= self.min_objects <= MAX_OBJECTS, f"must be in 0..{MAX_OBJECTS}"),
            ("max_objects", self.min_objects <= self.max_objects <= MAX_OBJECTS,
             f"must be in min_objects..{MAX_OBJECTS}"),
            ("min_size", 3 <= self.min_size <= 64, "must be in 3..64"),
            ("max_size", self.min_size <= self.max_size <= 64, "must be in min_size..64"),
            ("max_overlap", 0 <= self.max_overlap < 1, "must be in [0, 1)"),
            ("num_regions", 1 <= self.num_regions <= len(STUFF), f"must be in 1..{len(STUFF)}"),
            ("texture", 0 <= self.texture <= 1, "must be in [0, 1]"),
            ("grid", 0 <= self.grid <= 16, "must be in [0, 16]"),
            ("shading", 0 <= self.shading <= 1, "must be in [0, 1]"),
            ("cluster", 0 <= self.cluster <= 1, "must be in [0, 1]"),
            ("faint", 0 <= self.faint <= 1, "must be in [0, 1]"),
            ("faint_min", 0 < self.faint_min <= 1, "must be in (0, 1]"),
            ("faint_max", self.faint_min <= self.faint_max <= 1, "must be in faint_min..1"),
            ("long_tail", 1 <= self.long_tail <= 1000, "must be in [1, 1000]"),
            ("confusion", 0 <= self.confusion <= 1, "must be in [0, 1]"),
        ]
        for key, ok, rule in rules:
            if not ok:
                raise ConfigError(f"world level: {key}={getattr(self, key)!r} {rule}")


LEVELS: dict[str, WorldLevel] = {
    # Detection is solved here (see docs/results.md#early-worlds): 32 coordinate bins are exact at 64 px.
    "easy": WorldLevel(1, 3, 14, 32, max_overlap=0.0, num_regions=1, texture=0.0,
                       colour_overlap=False, grid=2),
    "medium": WorldLevel(1, 6, 10, 28, max_overlap=0.25, num_regions=2, texture=0.5,
                         colour_overlap=False, shading=0.3),
    "crowded": WorldLevel(6, 12, 8, 16, max_overlap=0.3, num_regions=2, texture=0.5,
                          colour_overlap=True, shading=0.3, cluster=0.3),
    # The medium world with more, smaller objects, 40 % of them alpha-blended into the background:
    # an MLE detector finds them but ranks its boxes badly (oracle ranking +9 mAP over token
    # probability, see docs/results.md#faint-world): the world where the box score decides the metric.
    "faint": WorldLevel(2, 8, 8, 24, max_overlap=0.25, num_regions=2, texture=0.5,
                        colour_overlap=False, shading=0.3, faint=0.4, faint_min=0.12, faint_max=0.35),
    # The medium world made misaligned as COCO is: long-tailed kinds (circle 20x as frequent as hexagon,
    # geometric between: 41 / 25 / 15 / 9 / 5.5 / 3.3 / 2 % in KINDS order) and two confusable pairs,
    # circle/hexagon and square/diamond, each a commoner kind with a rarer one. A paired shape is drawn as
    # a blend of its pair's two shapes (`morph_mask`), and half of each kind's shapes fall in the band of
    # blends both kinds draw from evenly (`look_range`): at equal frequencies the best classifier of a pair
    # is right 75 % of the time, a small CNN on crops 65 % (circle/hexagon) and 72 % (square/diamond)
    # (benchmarks/confusable_pairs.py, docs/results.md). In the band the frequencies decide: the likelier
    # class is always the commoner one (20:1 for circle:hexagon, 2.7:1 for square:diamond), so greedy MLE,
    # emitting its likeliest tokens, should name the commoner kind there and miss half the hexagons and
    # diamonds, while COCO mAP, which weighs every class the same, pays for a hedged second box of the
    # rarer kind (a low-scored false positive costs the commoner class little), and so does a reward with
    # no penalty for a wrong-class or background box. The blends of one pair also resemble the other's.
    "misaligned": WorldLevel(1, 6, 10, 28, max_overlap=0.25, num_regions=2, texture=0.5,
                             colour_overlap=False, shading=0.3, long_tail=20.0, confusion=0.5),
    # Meant for 96 or 128 px images (8-15 or 10-20 px shapes).
    "dense": WorldLevel(10, 20, 5, 10, max_overlap=0.35, num_regions=3, texture=0.7,
                        colour_overlap=True, shading=0.4, cluster=0.5),
}


# ---- shape masks: geometry in shape_masks.py -----------------------------------------------------

def object_mask(kind: int, look: float | None, w: int, h: int) -> np.ndarray:
    """The mask of a placed object: its kind's shape, or (look not None) a blend along its CONFUSABLE pair."""
    if look is None:
        return shape_mask(KINDS[kind], w, h)
    return morph_mask(_PAIR_OF[KINDS[kind]], look, w, h)


# ---- background ----------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """float[size, size] in about [-1, 1]: a cells x cells random grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False) + 0.5 * cells / size
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]  # (size, cells + 1)
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _texture(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """float[size, size], roughly in [-1, 1]: brightness pattern of a stuff class."""
    y, x = [(g + 0.5) / size for g in np.ogrid[0:size, 0:size]]
    noise = rng.normal(0, 0.35, (size, size))
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(6, 12)
    if kind == "gradient":
        return 1.2 * (0.5 - y) + 0.3 * noise
    if kind == "stripes":
        return 0.7 * np.sin(2 * np.pi * freq * (x + 0.1 * y) + phase) + 0.6 * noise
    if kind == "waves":
        return 0.8 * np.sin(2 * np.pi * freq * (y + 0.04 * np.sin(2 * np.pi * 3 * x)) + phase) + 0.3 * noise
    if kind == "blotch":
        return _smooth_noise(rng, size, 5) + 0.4 * noise
    return 1.6 * noise  # speckle


def _region_labels(rng: np.random.Generator, k: int, size: int) -> np.ndarray:
    """int[size, size] in 0..k-1: a wavy line (k=2) or warped nearest-seed cells; each region >= 5 %."""
    if k == 1:
        return np.zeros((size, size), np.int64)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    for _ in range(20):
        wobble = rng.uniform(0, 0.08) * np.sin(2 * np.pi * rng.uniform(1, 3) * (x + y) + rng.uniform(0, 7))
        if k == 2:
            angle = rng.uniform(0, np.pi)
            labels = (x * np.cos(angle) + y * np.sin(angle) + wobble > rng.uniform(-0.25, 0.25)).astype(np.int64)
        else:
            seeds = rng.uniform(-0.5, 0.5, (k, 2))
            d = (x[None] + wobble - seeds[:, 0, None, None]) ** 2 + (y[None] - seeds[:, 1, None, None]) ** 2
            labels = d.argmin(0)
        if np.bincount(labels.ravel(), minlength=k).min() >= 0.05 * size * size:
            return labels
    return labels  # a rare lopsided split: kept, its empty regions are simply absent


def _background(rng: np.random.Generator, level: WorldLevel, size: int):
    """-> (float[S, S, 3] RGB, int[S, S] region index, stuff names per region)."""
    names = [list(STUFF)[i] for i in rng.choice(len(STUFF), level.num_regions, replace=False)]
    labels = _region_labels(rng, level.num_regions, size)
    colours = np.array([np.array(STUFF[n].colour) + rng.integers(-12, 13, 3) for n in names])  # (k, 3)
    shades = np.stack([1 + 0.25 * level.texture * _texture(rng, STUFF[n].texture, size) for n in names])
    shade = np.take_along_axis(shades, labels[None], 0)[0]  # (S, S)
    return colours[labels] * shade[..., None], labels, names


# ---- objects -------------------------------------------------------------------------------------

def check_sizes(level: WorldLevel, size: int) -> tuple[int, int, int]:
    """(smallest side, largest side, grid step) in pixels of this image size."""
    scale = size / 64
    step = max(1, round(level.grid * scale)) if level.grid else 1
    lo = step * math.ceil(max(3, round(level.min_size * scale, 6)) / step)
    hi = step * math.floor(round(level.max_size * scale, 6) / step)
    if hi < lo or hi > size:
        raise ConfigError(f"world level: sizes {level.min_size}..{level.max_size} (grid {level.grid}) "
                          f"give no shape side in 3..{size} px at image_size={size}")
    return lo, hi, step


def _draw_box(rng, boxes, lo, hi, step, size, cluster) -> tuple[int, int, int, int]:
    """A random box (x, y, w, h) on the grid; with chance `cluster`, against an earlier box."""
    w = step * int(rng.integers(lo // step, hi // step + 1))
    h = int(np.clip(step * round(w * np.exp(rng.uniform(-0.2, 0.2)) / step), lo, hi))
    if boxes and rng.random() < cluster:
        bx, by, bw, bh = boxes[int(rng.integers(len(boxes)))]
        along_x, along_y = int(rng.integers(-w + 1, bw)), int(rng.integers(-h + 1, bh))
        x, y = [(bx - w, by + along_y), (bx + bw, by + along_y),
                (bx + along_x, by - h), (bx + along_x, by + bh)][int(rng.integers(4))]
    else:
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    x = min(max(0, step * round(x / step)), step * ((size - w) // step))
    y = min(max(0, step * round(y / step)), step * ((size - h) // step))
    return x, y, w, h


def _apart(a, b) -> bool:
    """Boxes (x, y, w, h) separated by at least one pixel."""
    return a[0] + a[2] < b[0] or b[0] + b[2] < a[0] or a[1] + a[3] < b[1] or b[1] + b[3] < a[1]


def kind_frequencies(level: WorldLevel) -> np.ndarray:
    """float[K]: the chance a shape is of each kind; KINDS[i] is long_tail ** (-i / (K - 1)) times KINDS[0]."""
    weights = float(level.long_tail) ** (-np.arange(len(KINDS)) / (len(KINDS) - 1))
    return weights / weights.sum()


def _draw_kind(rng, level: WorldLevel) -> int:
    if level.long_tail == 1:  # even levels draw as they always did
        return int(rng.integers(len(KINDS)))
    return int(rng.choice(len(KINDS), p=kind_frequencies(level)))


def look_range(level: WorldLevel, kind: str) -> tuple[float, float] | None:
    """Where a kind's look (0: its pair's first kind, 1: the second) is drawn, uniformly; None: its own shape.

    The first kind of a pair draws in [0, a], the second in [1 - a, 1], a = 1 / (2 - confusion): a share
    `confusion` of each lies in the band [1 - a, a] that both draw from evenly, where no cue tells them
    apart, and the rest is unmistakable, so at equal frequencies the best classifier is right
    1 - confusion / 2 of the time.
    """
    if level.confusion == 0 or kind not in _PAIR_OF:
        return None
    a = 1 / (2 - level.confusion)
    return (0.0, a) if _PAIR_OF[kind][0] == kind else (1 - a, 1.0)


def _draw_look(rng, level: WorldLevel, kind: int) -> float | None:
    span = look_range(level, KINDS[kind])
    return None if span is None else float(rng.uniform(*span))


def _place(rng, level: WorldLevel, size: int, colours: list[str]):
    """Draw objects in order -> (list of (kind index, colour, box, look), int[S, S] owner map, -1 = none).

    look: None (the kind's own shape) or where the shape sits between its CONFUSABLE pair (`look_range`).
    """
    lo, hi, step = check_sizes(level, size)
    target = int(rng.integers(level.min_objects, level.max_objects + 1))
    owner = np.full((size, size), -1, np.int64)
    objects, boxes, full, visible = [], [], [], []
    for _ in range(100 * max(target, 1)):
        if len(objects) == target:
            break
        kind = _draw_kind(rng, level)
        x, y, w, h = box = _draw_box(rng, boxes, lo, hi, step, size, level.cluster)
        look = _draw_look(rng, level, kind)
        m = object_mask(kind, look, w, h)
        under = owner[y:y + h, x:x + w][m]
        hidden = np.bincount(under[under >= 0], minlength=len(objects))
        if level.max_overlap == 0:
            ok = all(_apart(box, b) for b in boxes)
        else:
            ok = bool(np.all(np.array(visible) - hidden >= (1 - level.max_overlap) * np.array(full)))
        if not ok:
            continue
        visible = [v - int(c) for v, c in zip(visible, hidden)] + [int(m.sum())]
        full.append(int(m.sum()))
        owner[y:y + h, x:x + w][m] = len(objects)
        objects.append((kind, colours[int(rng.integers(len(colours)))], box, look))
        boxes.append(box)
    if len(objects) < level.min_objects:
        raise ConfigError(f"world level: could not place min_objects={level.min_objects} shapes of "
                          f"{lo}-{hi} px in a {size} px image; lower min_objects or max_size")
    return objects, owner


def _paint(rng, canvas: np.ndarray, objects, level: WorldLevel) -> None:
    """Draw the objects in order onto canvas (float[S, S, 3]), each with a brightness ramp; a share
    `level.faint` of them blended into what lies under them at an opacity in faint_min..faint_max."""
    shading = level.shading
    for kind, colour, (x, y, w, h), look in objects:
        m = object_mask(kind, look, w, h)
        base = np.array(COLOURS[colour]) + rng.integers(-12, 13, 3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.ogrid[0:h, 0:w]
        ramp = ((xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)) / (max(w, h) / 2)
        shade = 1 - 0.35 * shading * np.clip(ramp, -1, 1)
        paint = base * shade[..., None]
        if level.faint > 0 and rng.uniform() < level.faint:  # levels without faint shapes draw nothing here
            alpha = rng.uniform(level.faint_min, level.faint_max)
            paint = alpha * paint + (1 - alpha) * canvas[y:y + h, x:x + w]
        canvas[y:y + h, x:x + w][m] = paint[m]


def _tight_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def make_scene(rng: np.random.Generator, level: WorldLevel, size: int) -> dict:
    """One image -> {image uint8[S, S, 3], segments int[S, S] (panoptic ids), things, stuff}.

    things: [{id (segment id), category_id, kind, colour, bbox, area, cx, cy, look}] in drawing order
    (look: None, or where a CONFUSABLE kind's shape sits between its pair, see `look_range`);
    stuff: [{id (segment id), category_id, name, bbox, area}] largest first.
    """
    canvas, labels, names = _background(rng, level, size)
    colours = [c for c in COLOURS if level.colour_overlap or all(c not in STUFF[n].like for n in names)]
    objects, owner = _place(rng, level, size, colours)
    _paint(rng, canvas, objects, level)
    segments = owner + 1  # things: 1..n
    areas = np.bincount(segments.ravel(), minlength=len(objects) + 1)
    things = []
    for j, (kind, colour, (x, y, w, h), look) in enumerate(objects):
        bx, by, bw, bh = _tight_box(owner[y:y + h, x:x + w] == j)  # visible part, inside its box
        things.append({"id": j + 1, "category_id": kind + 1, "kind": KINDS[kind], "colour": colour,
                       "bbox": [x + bx, y + by, bw, bh], "area": int(areas[j + 1]),
                       "cx": x + bx + bw / 2, "cy": y + by + bh / 2, "look": look})
    stuff = []
    for r, name in enumerate(names):
        mask = (labels == r) & (owner < 0)
        if mask.any():
            category_id = STUFF_ID_OFFSET + list(STUFF).index(name)
            segments[mask] = 1000 + category_id
            stuff.append({"name": name, "category_id": category_id, "id": 1000 + category_id,
                          "bbox": _tight_box(mask), "area": int(mask.sum())})
    stuff.sort(key=lambda s: -s["area"])
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return {"image": image, "segments": segments, "things": things, "stuff": stuff}
