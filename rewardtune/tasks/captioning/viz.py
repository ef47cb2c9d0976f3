"""Draw a caption under its image for reports."""
from __future__ import annotations

import textwrap
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SCALE_TO = 256  # images are upscaled (nearest) to about this width


def visualize(image: np.ndarray, output: str, target: Any,
              score: Optional[Callable[[str, Any], float]] = None) -> np.ndarray:
    """HxWx3 uint8 image, caption, target -> uint8 [H', W', 3]: the image with the caption below.

    `score(output, target)`, when given, adds "CIDEr-D x.xx" (the task binds its reward here);
    the first reference caption, when the target has one, is drawn in gray under the output.
    """
    image = np.asarray(image, np.uint8)
    factor = max(1, SCALE_TO // max(1, image.shape[1]))
    big = Image.fromarray(image).resize((image.shape[1] * factor, image.shape[0] * factor), Image.NEAREST)
    font = ImageFont.load_default()
    chars = max(12, big.width // 6)
    lines = [(line, (0, 0, 0)) for line in textwrap.wrap(output or "(empty)", chars)]
    if score is not None:
        lines.append((f"CIDEr-D {score(output, target):.2f}", (0, 0, 160)))
    refs = target.get("refs", []) if isinstance(target, dict) else []
    if refs:
        lines += [(line, (110, 110, 110)) for line in textwrap.wrap("ref: " + refs[0], chars)]
    line_height = 12
    canvas = Image.new("RGB", (big.width, big.height + 4 + line_height * len(lines)), (255, 255, 255))
    canvas.paste(big, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (text, colour) in enumerate(lines):
        draw.text((2, big.height + 2 + i * line_height), text, fill=colour, font=font)
    return np.asarray(canvas, np.uint8)
