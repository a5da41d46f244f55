"""Detection answers: ``<locY0><locX0><locY1><locX1> label ; ...`` parsed and drawn.

Coordinates are bins of 1024 over the side of the square the model saw
(y0 x0 y1 x1), as in PaLI. An image that was not square was padded to that
square (``pali_engine.image``, ``resize="pad"``), so with the image's size
the boxes are mapped back to fractions of the image itself.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from .image import square_frame

_DETECTION = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>\s*([^;<]*)")

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image size


def parse_detections(text: str, image_size: Optional[Tuple[int, int]] = None,
                     resize: str = "pad") -> List[Tuple[Box, str]]:
    """[((x0, y0, x1, y1), label)] for every box in a detection answer.

    Without ``image_size`` the coordinates are fractions of the model's square
    input. With ``image_size=(width, height)`` they are fractions of that image
    (clipped to [0, 1]): the padding added around a non-square image is taken
    off again (``resize`` as the image was prepared).
    """
    if image_size is None:
        width, height, frame_w, frame_h, offset_x, offset_y = 1, 1, 1, 1, 0, 0
    else:
        width, height = image_size
        frame_w, frame_h, offset_x, offset_y = square_frame(width, height, resize)

    def to_image(fraction: float, frame: int, offset: int, side: int) -> float:
        return min(1.0, max(0.0, (fraction * frame - offset) / side))

    out = []
    for match in _DETECTION.finditer(text):
        y0, x0, y1, x1 = (int(match.group(i)) / 1023 for i in range(1, 5))
        box = (to_image(x0, frame_w, offset_x, width), to_image(y0, frame_h, offset_y, height),
               to_image(x1, frame_w, offset_x, width), to_image(y1, frame_h, offset_y, height))
        out.append((box, match.group(5).strip()))
    return out


def _label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_detections(image, text: str, out_path: str, resize: str = "pad") -> int:
    """Draws the boxes and labels of a detection answer on the image; returns how many.

    ``image``: a path, a PIL image or a uint8 array, as ``Engine.generate``
    takes it; ``resize`` as the image was prepared for the model.
    """
    from PIL import Image, ImageDraw

    from .image import to_rgb_array

    picture = Image.fromarray(to_rgb_array(image), "RGB")
    # Boxes on a small image are hard to see: draw on an enlarged copy.
    scale = max(1, 256 // max(picture.size))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    # Lines about 1/200 of the longer side: 2 px up to 400 px, 20 px on a 4000 px photo.
    line_width = max(2, round(max(picture.size) / 200))
    draw = ImageDraw.Draw(picture)
    font = _label_font(max(10, 5 * line_width))
    detections = parse_detections(text, (picture.width, picture.height), resize)
    for (x0, y0, x1, y1), label in detections:
        box = (x0 * picture.width, y0 * picture.height, x1 * picture.width, y1 * picture.height)
        draw.rectangle(box, outline=(255, 0, 255), width=line_width)
        draw.text((box[0] + line_width, box[1] + line_width // 2), label, fill=(255, 0, 255), font=font)
    picture.save(out_path)
    return len(detections)
