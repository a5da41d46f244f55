"""Segmentation answers of PaliGemma: ``<locY0><locX0><locY1><locX1><seg...> x 16 label ; ...``.

Why: PaliGemma writes a mask as 16 codes of a VQ-VAE (big_vision's
``vae-oid``: 128 codes of 512 values); the codes, laid out 4 x 4, go through
that VAE's decoder to a 64 x 64 mask of the box. The decoder's weights are not
part of any PaliGemma checkpoint: users give the file (``vae-oid.npz``,
PyTorch names and layouts). This is our own NumPy implementation of that
decoder (runtime: numpy and pillow only):

    codes [16] -> embeddings [512, 4, 4]
    -> conv 1x1 (512 -> 128), ReLU
    -> 2 x residual block (conv 3x3, ReLU, conv 3x3, ReLU, conv 1x1, + input)
    -> 4 x (transposed conv 4x4 stride 2 padding 1, ReLU): 128 -> 128 -> 64 -> 32 -> 16 channels, 4 -> 64 px
    -> conv 1x1 (16 -> 1) -> values in about [-1, 1]

The mask of a box is that map mapped to [0, 1], resized to the box (bilinear)
and placed in a mask of the whole image; a pixel belongs to the object where
it is above 0.5.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

#: The loc bins of PaliGemma: a coordinate is bin / 1024 of the side.
LOC_BINS = 1024
NUM_CODES = 16
MASK_SIZE = 64

_OBJECT = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>\s*((?:<seg\d{3}>\s*){16})?([^;<]*)")
_SEG = re.compile(r"<seg(\d{3})>")

#: The decoder's parameters: name -> shape (PyTorch layouts: conv [out, in, kh, kw],
#: transposed conv [in, out, kh, kw]).
DECODER_SHAPES: Dict[str, Tuple[int, ...]] = {
    "_vq_vae._embedding": (128, 512),
    "decoder.0.weight": (128, 512, 1, 1), "decoder.0.bias": (128,),
    **{f"decoder.{b}.net.{i}.{kind}": shape
       for b in (2, 3)
       for i, (w, bias) in {0: ((128, 128, 3, 3), (128,)), 2: ((128, 128, 3, 3), (128,)),
                            4: ((128, 128, 1, 1), (128,))}.items()
       for kind, shape in (("weight", w), ("bias", bias))},
    "decoder.4.weight": (128, 128, 4, 4), "decoder.4.bias": (128,),
    "decoder.6.weight": (128, 64, 4, 4), "decoder.6.bias": (64,),
    "decoder.8.weight": (64, 32, 4, 4), "decoder.8.bias": (32,),
    "decoder.10.weight": (32, 16, 4, 4), "decoder.10.bias": (16,),
    "decoder.12.weight": (1, 16, 1, 1), "decoder.12.bias": (1,),
}


@dataclass
class SegmentedObject:
    """One object of a segmentation answer."""

    box: Tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels
    label: str
    codes: Optional[List[int]]  # the 16 mask codes, None when the answer has none
    mask: Optional[np.ndarray] = None  # bool [height, width] of the whole image


def _conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, padding: int) -> np.ndarray:
    """x [C, H, W], weight [O, C, k, k] -> [O, H', W'] (stride 1), in float64."""
    out_channels, channels, k, _ = weight.shape
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    h, w = padded.shape[1] - k + 1, padded.shape[2] - k + 1
    columns = np.empty((channels, k, k, h, w))
    for i in range(k):
        for j in range(k):
            columns[:, i, j] = padded[:, i:i + h, j:j + w]
    out = weight.reshape(out_channels, -1) @ columns.reshape(channels * k * k, h * w)
    return out.reshape(out_channels, h, w) + bias[:, None, None]


def _conv_transpose2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Transposed conv, kernel 4, stride 2, padding 1: x [C, H, W], weight [C, O, 4, 4] -> [O, 2H, 2W]."""
    channels, out_channels, k, _ = weight.shape
    h, w = x.shape[1:]
    full = np.zeros((out_channels, 2 * (h - 1) + k, 2 * (w - 1) + k))
    # Every input pixel adds its kernel-weighted contribution at twice its position.
    contributions = np.einsum("chw,coij->ohwij", x, weight)
    for i in range(k):
        for j in range(k):
            full[:, i:i + 2 * h:2, j:j + 2 * w:2] += contributions[:, :, :, i, j]
    return full[:, 1:1 + 2 * h, 1:1 + 2 * w] + bias[:, None, None]


class MaskDecoder:
    """big_vision's VQ-VAE mask decoder for PaliGemma's ``<seg>`` codes."""

    def __init__(self, params: Mapping[str, np.ndarray]):
        missing = [name for name in DECODER_SHAPES if name not in params]
        if missing:
            raise ValueError(f"the mask decoder's weights lack {missing[0]!r}"
                             f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        self.params = {}
        for name, shape in DECODER_SHAPES.items():
            value = np.asarray(params[name], dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"the mask decoder's {name!r} has shape {value.shape}, expected {shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"the mask decoder's {name!r} holds non-finite values")
            self.params[name] = value

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MaskDecoder":
        """From big_vision's ``vae-oid.npz``; ValueError naming the file when it is not that."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                params = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a mask decoder weight file (.npz): {error}") from None
        try:
            return cls(params)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def decode(self, codes) -> np.ndarray:
        """16 codes -> float32 [64, 64], about [-1, 1] (above 0 is the object)."""
        codes = np.asarray(codes)
        if codes.shape != (NUM_CODES,) or codes.min() < 0 or codes.max() >= 128:
            raise ValueError(f"a mask is 16 codes in [0, 128), got {codes.tolist()}")
        p = self.params
        x = p["_vq_vae._embedding"][codes].reshape(4, 4, -1).transpose(2, 0, 1)
        x = np.maximum(_conv2d(x, p["decoder.0.weight"], p["decoder.0.bias"], 0), 0)
        for block in (2, 3):
            q = f"decoder.{block}.net."
            h = np.maximum(_conv2d(x, p[q + "0.weight"], p[q + "0.bias"], 1), 0)
            h = np.maximum(_conv2d(h, p[q + "2.weight"], p[q + "2.bias"], 1), 0)
            x = x + _conv2d(h, p[q + "4.weight"], p[q + "4.bias"], 0)
        for layer in (4, 6, 8, 10):
            x = np.maximum(_conv_transpose2d(x, p[f"decoder.{layer}.weight"], p[f"decoder.{layer}.bias"]), 0)
        return _conv2d(x, p["decoder.12.weight"], p["decoder.12.bias"], 0)[0].astype(np.float32)


def parse_segmentation(text: str, image_size: Tuple[int, int]) -> List[SegmentedObject]:
    """The objects of an answer, boxes in the pixels of an image of ``image_size`` = (width, height).

    Coordinates are bins of 1024 over each side of the image the processor
    resized (PaliGemma stretches to its square input), so they map straight
    back to the original image.
    """
    width, height = image_size
    objects = []
    for match in _OBJECT.finditer(text):
        y0, x0, y1, x1 = (int(match.group(i)) / LOC_BINS for i in range(1, 5))
        codes = [int(c) for c in _SEG.findall(match.group(5))] if match.group(5) else None
        objects.append(SegmentedObject((x0 * width, y0 * height, x1 * width, y1 * height),
                                       match.group(6).strip(), codes))
    return objects


def box_mask(decoder: MaskDecoder, obj: SegmentedObject, image_size: Tuple[int, int]) -> np.ndarray:
    """bool [height, width]: the object's decoded mask, resized into its box (as big_vision places it)."""
    from PIL import Image

    width, height = image_size
    mask = np.zeros((height, width), dtype=bool)
    if obj.codes is None:
        return mask
    x0, y0, x1, y1 = (int(round(v)) for v in obj.box)
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x1 <= x0 or y1 <= y0:
        return mask
    small = np.clip(decoder.decode(obj.codes) * 0.5 + 0.5, 0.0, 1.0)
    picture = Image.fromarray((small * 255).astype(np.uint8)).resize((x1 - x0, y1 - y0), Image.BILINEAR)
    mask[y0:y1, x0:x1] = np.asarray(picture) / 255.0 > 0.5
    return mask


def draw_objects(image, text: str, out_path: str, decoder: Optional[MaskDecoder] = None) -> int:
    """Draws the boxes, labels and (with a decoder) masks of a PaliGemma detection or
    segmentation answer on the image; returns how many objects."""
    from PIL import Image, ImageDraw

    from .image import to_rgb_array

    picture = Image.fromarray(to_rgb_array(image), "RGB")
    size = picture.size
    objects = parse_segmentation(text, size)
    if decoder is not None:
        overlay = np.asarray(picture).astype(np.float32)
        for obj in objects:
            mask = box_mask(decoder, obj, size)
            overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.array([255.0, 0.0, 255.0])
        picture = Image.fromarray(overlay.astype(np.uint8), "RGB")
    line_width = max(2, round(max(size) / 200))
    draw = ImageDraw.Draw(picture)
    for obj in objects:
        draw.rectangle(obj.box, outline=(255, 0, 255), width=line_width)
        draw.text((obj.box[0] + line_width, obj.box[1] + line_width), obj.label, fill=(255, 0, 255))
    picture.save(out_path)
    return len(objects)
