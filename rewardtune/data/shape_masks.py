"""The shapes of the shapes world as pixel masks: each kind drawn to fill a w x h box, and blends of two
convex kinds (the confusable pairs of the "misaligned" level). Pure geometry: no randomness, no I/O.

A kind's shape is a union of convex pieces with vertices in [-1, 1]^2 (y down), stretched so that the
pieces' extreme vertices sit on the centres of the box's edge pixels; a pixel belongs to the shape when
its centre lies within half a pixel of a piece. Every shape touches all four sides of its box.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def _star_kites(points: int = 5, inner: float = 0.45) -> list[np.ndarray]:
    """A star as convex kites (centre, inner, tip, inner), scaled to span [-1, 1] on both axes."""
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    v = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    lo, hi = v.min(0), v.max(0)
    v = 2 * (v - lo) / (hi - lo) - 1
    centre = 2 * (0 - lo) / (hi - lo) - 1
    return [np.stack([centre, v[i - 1], v[i], v[(i + 1) % len(v)]]) for i in range(0, len(v), 2)]


_T = 0.36  # half-width of a cross's arms
_PIECES: dict[str, list[np.ndarray]] = {  # convex pieces, vertices in [-1, 1]^2, y down
    "square": [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])],
    "triangle": [np.array([[0, -1], [1, 1], [-1, 1]])],
    "diamond": [np.array([[0, -1], [1, 0], [0, 1], [-1, 0]])],
    "hexagon": [np.array([[-1, 0], [-0.5, -1], [0.5, -1], [1, 0], [0.5, 1], [-0.5, 1]])],
    "cross": [np.array([[-1, -_T], [1, -_T], [1, _T], [-1, _T]]),
              np.array([[-_T, -1], [_T, -1], [_T, 1], [-_T, 1]])],
    "star": _star_kites(),
}


def _inside_convex(vertices: np.ndarray, x: np.ndarray, y: np.ndarray, tol: float) -> np.ndarray:
    """Points within `tol` of every half-plane of a convex polygon (x: [1, W], y: [H, 1] -> [H, W])."""
    inside = np.ones(np.broadcast_shapes(x.shape, y.shape), bool)
    centre = vertices.mean(0)
    for a, b in zip(vertices, np.roll(vertices, -1, 0)):
        normal = np.array([a[1] - b[1], b[0] - a[0]]) / np.hypot(*(b - a))
        if normal @ (centre - a) < 0:
            normal = -normal
        inside &= normal[0] * (x - a[0]) + normal[1] * (y - a[1]) >= -tol
    return inside


@lru_cache(maxsize=8192)
def shape_mask(kind: str, w: int, h: int) -> np.ndarray:
    """bool[h, w]: pixels whose centre is within half a pixel of the shape stretched over the box.

    Every shape touches all four sides of its box, so its tight box is the whole box.
    """
    x = np.arange(w)[None, :] + 0.5
    y = np.arange(h)[:, None] + 0.5
    if kind == "circle":
        mask = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2 <= 1
    else:
        mask = np.zeros((h, w), bool)
        for piece in _PIECES[kind]:  # vertices at pixel centres: -1 -> 0.5, 1 -> w - 0.5
            px = 0.5 + (piece[:, 0] + 1) / 2 * (w - 1)
            py = 0.5 + (piece[:, 1] + 1) / 2 * (h - 1)
            mask |= _inside_convex(np.stack([px, py], 1), x, y, tol=0.5)
    mask.setflags(write=False)
    return mask


def _radius(kind: str, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Distance from the box centre to the edge of a centred convex kind along each direction (box [-1, 1]^2)."""
    if kind == "circle":
        return np.ones(np.broadcast_shapes(cos.shape, sin.shape))
    (vertices,) = _PIECES[kind]
    radius = np.full(np.broadcast_shapes(cos.shape, sin.shape), np.inf)
    for a, b in zip(vertices, np.roll(vertices, -1, 0)):
        normal = np.array([b[1] - a[1], a[0] - b[0]], float)  # the edge is normal . p = normal . a > 0
        if normal @ a < 0:
            normal = -normal
        along = normal[0] * cos + normal[1] * sin
        radius = np.minimum(radius, np.where(along > 1e-12, (normal @ a) / np.maximum(along, 1e-12), np.inf))
    return radius


def morph_mask(pair: tuple[str, str], look: float, w: int, h: int) -> np.ndarray:
    """bool[h, w]: the shape whose radius is the blend (1 - look) * pair[0]'s + look * pair[1]'s.

    look 0 draws pair[0], 1 draws pair[1]; every blend touches all four sides of its box (the kinds in
    CONFUSABLE all reach the box edge at the middle of each side). Pixel centres span [-1, 1] as the
    polygon vertices do in `shape_mask`, with half a pixel of tolerance.
    """
    u = (2 * np.arange(w) / (w - 1) - 1)[None, :]
    v = (2 * np.arange(h) / (h - 1) - 1)[:, None]
    rho = np.hypot(u, v)
    safe = np.maximum(rho, 1e-12)
    cos, sin = np.where(rho > 0, u / safe, 1.0), v / safe  # the centre (rho 0) looks along +x
    radius = (1 - look) * _radius(pair[0], cos, sin) + look * _radius(pair[1], cos, sin)
    return rho <= radius + 1 / (min(w, h) - 1)
