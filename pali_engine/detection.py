"""Detection answers: ``<locY0><locX0><locY1><locX1> label ; ...`` parsed and drawn.

Coordinates are bins of 1024 over the image side (y0 x0 y1 x1), as in PaLI.
"""

from __future__ import annotations

import re
from typing import List, Tuple

_DETECTION = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>\s*([^;<]*)")

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image size


def parse_detections(text: str) -> List[Tuple[Box, str]]:
    """[((x0, y0, x1, y1) in [0, 1], label)] for every box in a detection answer."""
    out = []
    for match in _DETECTION.finditer(text):
        y0, x0, y1, x1 = (int(match.group(i)) / 1023 for i in range(1, 5))
        out.append(((x0, y0, x1, y1), match.group(5).strip()))
    return out


def draw_detections(image, text: str, out_path: str) -> int:
    """Draws the boxes and labels of a detection answer on the image; returns how many."""
    from PIL import Image, ImageDraw

    picture = image.convert("RGB") if isinstance(image, Image.Image) else None
    if picture is None:
        import numpy as np

        picture = Image.open(image).convert("RGB") if isinstance(image, str) else Image.fromarray(np.asarray(image))
    # Boxes on a small image are hard to see: draw on an enlarged copy.
    scale = max(1, 256 // max(picture.size))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    detections = parse_detections(text)
    for (x0, y0, x1, y1), label in detections:
        box = (x0 * picture.width, y0 * picture.height, x1 * picture.width, y1 * picture.height)
        draw.rectangle(box, outline=(255, 0, 255), width=2)
        draw.text((box[0] + 2, box[1] + 1), label, fill=(255, 0, 255))
    picture.save(out_path)
    return len(detections)
