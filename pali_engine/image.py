"""Image preprocessing for PaLI models (runtime: numpy and pillow only).

Why: every backend (PyTorch, onnxruntime, the C++ engine) must see the same
pixels, so there is one definition: RGB uint8 -> resize to S x S (PIL, only
when the size differs) -> float32 ``(x / 255 - mean) / std`` -> channels first.
With mean = std = 0.5 the pixels land in [-1, 1].
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

_RESAMPLE = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Any accepted image -> uint8 [H, W, 3].

    Accepts a file path, a PIL image (any mode: grayscale, RGBA, palette... are
    converted to RGB; alpha is dropped) or a uint8 array of shape (H, W),
    (H, W, 1), (H, W, 3) or (H, W, 4).  Raises ValueError otherwise.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with Image.open(path) as im:
                im.load()
                image = im.convert("RGB")
        except FileNotFoundError:
            raise ValueError(f"image file not found: {path!r}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image file {path!r}: {e}") from None
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"empty image (size {image.width}x{image.height})")
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
                raise ValueError("image array contains NaN")
            raise ValueError(f"image array must be uint8 (H, W, 3), got dtype {a.dtype}; "
                             "convert with np.clip(x, 0, 255).astype(np.uint8)")
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise ValueError(f"image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                             f"got {a.shape}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"empty image array of shape {a.shape}")
        c = a.shape[2]
        if c == 1:
            a = np.repeat(a, 3, axis=2)
        elif c == 4:
            a = a[:, :, :3]
        elif c != 3:
            raise ValueError(f"image array must have 1, 3 or 4 channels, got {c} (shape {a.shape})")
        return np.ascontiguousarray(a)
    raise ValueError(f"unsupported image type {type(image).__name__}: "
                     "expected a path, a PIL image or a uint8 numpy array")


def preprocess(image: ImageLike, size: int = 64, mean: Sequence[float] = (0.5, 0.5, 0.5),
               std: Sequence[float] = (0.5, 0.5, 0.5), resample: str = "bilinear") -> np.ndarray:
    """One image -> float32 [3, size, size], normalised ``(x / 255 - mean) / std``.

    The image is resized with PIL (``resample``, bilinear by default) only when
    it is not already size x size.
    """
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}; choose from {sorted(_RESAMPLE)}")
    a = to_rgb_array(image)
    if a.shape[0] != size or a.shape[1] != size:
        a = np.asarray(Image.fromarray(a, "RGB").resize((size, size), _RESAMPLE[resample]), dtype=np.uint8)
    # The same float32 operations as (a / 255 - mean) / std, done in place on
    # the channels-first output: no temporaries (a quarter of the time).
    x = np.empty((3, size, size), np.float32)
    np.multiply(a.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=x)
    x -= np.asarray(mean, np.float32)[:, None, None]
    x /= np.asarray(std, np.float32)[:, None, None]
    return x


def preprocess_batch(images: Sequence[ImageLike], size: int = 64,
                     mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                     resample: str = "bilinear") -> np.ndarray:
    """A list of images -> float32 [B, 3, size, size]."""
    if isinstance(images, (np.ndarray, Image.Image, str, os.PathLike)):
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        else:
            images = [images]
    if len(images) == 0:
        raise ValueError("empty list of images")
    return np.stack([preprocess(im, size, mean, std, resample) for im in images])
