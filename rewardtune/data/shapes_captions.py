"""Reference captions for a shapes-world scene: five plain-English descriptions, worded differently.

Pure functions of the scene and a numpy Generator (for the choice of wording), so captions are as
deterministic as the images. Each caption stresses something else: the full list of shapes, the
count, a relative position ("to the left of", "above"), the kinds alone, the largest shape.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty"]
MAX_GROUPS = 4  # a list of more (colour, kind) groups is cut to the largest few + "N other shapes"


def number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def plural(noun: str, n: int) -> str:
    if n == 1:
        return noun
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def counted(n: int, noun: str) -> str:
    """(1, 'orange star') -> 'an orange star'; (3, 'red cross') -> 'three red crosses'."""
    if n == 1:
        return ("an " if noun[0] in "aeiou" else "a ") + noun
    words = noun.split(" ")
    return " ".join([number(n)] + words[:-1] + [plural(words[-1], n)])


def join(items: Sequence[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def position(cx: float, cy: float, size: int) -> str:
    """Which ninth of the image a point is in: 'in the top left', 'at the top', 'on the right', ..."""
    col = ["left", "", "right"][min(2, max(0, int(3 * cx / size)))]
    row = ["top", "", "bottom"][min(2, max(0, int(3 * cy / size)))]
    if row and col:
        return f"in the {row} {col}"
    return f"at the {row}" if row else f"on the {col}" if col else "in the centre"


def relation(a: dict, b: dict) -> str:
    """Where shape a is relative to shape b, along the axis where their centres differ most."""
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _grouped(things: list[dict], key) -> list[tuple[int, str]]:
    """(count, name) groups, most frequent first (ties: first drawn first)."""
    counts = Counter(key(t) for t in things)
    return [(n, name) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def _listing(groups: list[tuple[int, str]]) -> str:
    if len(groups) <= MAX_GROUPS:
        return join(counted(n, name) for n, name in groups)
    head = groups[:MAX_GROUPS - 1]
    rest = sum(n for n, _ in groups[MAX_GROUPS - 1:])
    return join([counted(n, name) for n, name in head] + [f"{number(rest)} other {plural('shape', rest)}"])


def _background(stuff: list[dict], rng: np.random.Generator) -> str:
    total = sum(s["area"] for s in stuff) or 1
    names = [s["name"] for s in stuff if s["area"] >= 0.2 * total][:2] or [stuff[0]["name"]]
    return _choice(rng, ["on", "on a background of", "in front of", "over"]) + " " + join(names)


def describe(things: list[dict], stuff: list[dict], size: int, rng: np.random.Generator) -> list[str]:
    """Five captions for one scene.

    Args:
        things: visible shapes, each {kind, colour, cx, cy, area} (centre and area of the visible part).
        stuff: background regions, each {name, area}, largest first.
    """
    things = list(things)
    stuff = list(stuff) or [{"name": "nothing", "area": 1}]  # shapes cover every pixel
    return [_caption_list(things, stuff, rng), _caption_count(things, stuff, rng),
            _caption_relation(things, stuff, size, rng), _caption_kinds(things, stuff, rng),
            _caption_largest(things, stuff, size, rng)]


def _caption_list(things, stuff, rng) -> str:
    bg = _background(stuff, rng)
    if not things:
        return f"an empty scene {bg}"
    prefix = _choice(rng, ["", "a picture of ", "an image of ", "a drawing of "])
    return prefix + _listing(_grouped(things, lambda t: f"{t['colour']} {t['kind']}")) + " " + bg


def _caption_count(things, stuff, rng) -> str:
    names = join(s["name"] for s in stuff[:2])
    n = len(things)
    if n == 0:
        return f"there are no shapes, only {names}"
    if n == 1:
        t = things[0]
        return f"there is one shape, {counted(1, t['colour'] + ' ' + t['kind'])}, {_background(stuff, rng)}"
    where = _choice(rng, ["", " in the picture", " in this image"])
    top_n, top_colour = _grouped(things, lambda t: t["colour"])[0]
    most = f", most of them {top_colour}" if top_n * 2 > n else ""
    return f"there are {number(n)} shapes{where}{most}, and the background is {names}"


def _caption_relation(things, stuff, size, rng) -> str:
    if not things:
        return f"nothing but {join(s['name'] for s in stuff[:2])}"
    by_area = sorted(things, key=lambda t: -t["area"])
    a = by_area[0]
    name_a = counted(1, f"{a['colour']} {a['kind']}")
    if len(things) == 1:
        return f"{name_a} {position(a['cx'], a['cy'], size)} of the image"
    b = by_area[1]
    verb = _choice(rng, [" ", " is "])
    text = f"{name_a}{verb}{relation(a, b)} {counted(1, b['colour'] + ' ' + b['kind'])}"
    if len(things) > 2:
        more = len(things) - 2
        text += _choice(rng, [", with ", ", plus "]) + f"{number(more)} more {plural('shape', more)}"
    return text


def _caption_kinds(things, stuff, rng) -> str:
    if not things:
        return f"no shapes at all, just {stuff[0]['name']}"
    kinds = _listing(_grouped(things, lambda t: t["kind"]))
    prefix = _choice(rng, ["", "shapes: ", f"{counted(len(things), 'shape')}: "])
    suffix = _choice(rng, ["", " " + _background(stuff, rng)])
    return prefix + kinds + suffix


def _caption_largest(things, stuff, size, rng) -> str:
    if not things:
        return f"a plain background of {join(s['name'] for s in stuff[:2])}"
    a = max(things, key=lambda t: t["area"])
    size_word = _choice(rng, ["largest", "biggest"]) if len(things) > 1 else "only"
    text = (f"the {size_word} shape is {counted(1, a['colour'] + ' ' + a['kind'])} "
            f"{position(a['cx'], a['cy'], size)}")
    colours = [name for _, name in _grouped(things, lambda t: t["colour"])]
    if len(colours) > 1:
        if rng.random() < 0.5:
            text += "; the colours are " + join(colours)
        else:
            text += ", among " + join(colours) + " shapes"
    return text
