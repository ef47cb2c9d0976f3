"""Draw predicted boxes (class name + score) over faint ground-truth boxes, upscaled to be readable."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Distinct colours for classes (cycled); ground truth is drawn thin and white.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def _pixels(box: Sequence[float], width: int, height: int) -> list[float]:
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    return [xmin * (width - 1), ymin * (height - 1), xmax * (width - 1), ymax * (height - 1)]


def visualize(image: np.ndarray, output: dict, target: Optional[dict] = None,
              names: Optional[Sequence[str]] = None, min_side: int = 256) -> np.ndarray:
    """HxWx3 uint8 -> (sH)x(sW)x3 uint8 with s the integer scale making the short side >= min_side."""
    image = np.asarray(image, np.uint8)
    scale = max(1, -(-min_side // max(1, min(image.shape[:2]))))
    canvas = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    if target is not None:
        for box in np.asarray(target.get("boxes", np.zeros((0, 4)))).reshape(-1, 4):
            draw.rectangle(_pixels(box, w, h), outline=(255, 255, 255), width=1)
    boxes = np.asarray(output["boxes"]).reshape(-1, 4)
    scores = np.asarray(output.get("scores", np.ones(len(boxes))))
    for box, cls, score in zip(boxes, np.asarray(output["classes"]), scores):
        colour = PALETTE[int(cls) % len(PALETTE)]
        x0, y0, x1, y1 = _pixels(box, w, h)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        name = names[int(cls)] if names is not None and 0 <= int(cls) < len(names) else str(int(cls))
        label = f"{name} {float(score):.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((x0, y0), label)
        ty = max(0.0, y0 - (ty1 - ty0) - 2)
        draw.rectangle([x0, ty, x0 + (tx1 - tx0) + 2, ty + (ty1 - ty0) + 2], fill=colour)
        draw.text((x0 + 1, ty), label, fill=(0, 0, 0))
    return np.asarray(canvas, np.uint8)
