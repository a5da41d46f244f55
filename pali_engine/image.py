"""Image preprocessing for PaLI models (runtime: numpy and pillow only).

Why: every backend (PyTorch, onnxruntime, the C++ engine) must see the same
pixels, so there is one definition of the image contract:

1. Any accepted image -> RGB uint8. Transparent pixels are composited on
   white (a transparent background would otherwise turn black, which the
   model never saw); grayscale and palette images become RGB.
2. Not square -> ``resize="pad"`` (the default) centres the image on a square
   filled with the median colour of its border, so shapes keep their
   proportions, as in the square scenes the model was trained on;
   ``resize="stretch"`` stretches it instead.
3. Resize to S x S (PIL, ``resample``, only when the size differs) ->
   float32 ``(x / 255 - mean) / std`` -> channels first. With mean = std =
   0.5 the pixels land in [-1, 1].

Image paths are opened without blocking and must be regular files: a named
pipe or a device would make PIL wait forever for data.
"""

from __future__ import annotations

import os
import stat
from typing import Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

_RESAMPLE = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}

#: How an image that is not square reaches the model's square input.
RESIZE_MODES = ("pad", "stretch")

#: The colour transparent pixels are composited on.
_BACKGROUND = 255

#: The filters a model config's ``resample`` may name.
RESAMPLE_NAMES = tuple(_RESAMPLE)


def _open_regular_file(path: str):
    """The image file at ``path`` opened for reading, refused unless it is a regular file.

    O_NONBLOCK makes opening a named pipe return at once instead of waiting
    for a writer; fstat on the opened descriptor then tells what it is, with
    no window for the path to change in between.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path!r}") from None
    except OSError as error:
        raise ValueError(f"cannot open image file {path!r}: {error.strerror or error}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise ValueError(f"image path {path!r} is {kind}; give the path of an image file")
    return os.fdopen(fd, "rb")


def _read_image_file(path: str) -> Image.Image:
    with _open_regular_file(path) as file:
        try:
            with Image.open(file) as im:
                im.load()
                return im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read image file {path!r}: {e}") from None


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] -> uint8 [H, W, 3]: each pixel over a white background, rounded."""
    alpha = rgba[:, :, 3:].astype(np.uint32)
    mixed = rgba[:, :, :3].astype(np.uint32) * alpha + _BACKGROUND * (255 - alpha)
    return ((mixed + 127) // 255).astype(np.uint8)


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Any accepted image -> uint8 [H, W, 3].

    Accepts a file path, a PIL image (any mode: grayscale, palette... are
    converted to RGB) or a uint8 array of shape (H, W), (H, W, 1), (H, W, 3)
    or (H, W, 4). Transparency (an alpha channel, a palette's transparent
    colour) is composited on white. Raises ValueError otherwise.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _read_image_file(os.fspath(image))
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"empty image (size {image.width}x{image.height})")
        if _has_transparency(image):
            return _composite_on_white(np.asarray(image.convert("RGBA"), dtype=np.uint8))
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
            a = _composite_on_white(a)
        elif c != 3:
            raise ValueError(f"image array must have 1, 3 or 4 channels, got {c} (shape {a.shape})")
        return np.ascontiguousarray(a)
    raise ValueError(f"unsupported image type {type(image).__name__}: "
                     "expected a path, a PIL image or a uint8 numpy array")


def square_frame(width: int, height: int, resize: str = "pad") -> Tuple[int, int, int, int]:
    """(frame width, frame height, x offset, y offset) of the image inside what the model sees.

    With ``pad`` the frame is the square the image is centred on; with
    ``stretch`` it is the image itself. Detection boxes are fractions of the
    frame (``pali_engine.detection.parse_detections`` maps them back).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize {resize!r}; choose from {', '.join(RESIZE_MODES)}")
    if resize == "stretch" or width == height:
        return width, height, 0, 0
    side = max(width, height)
    return side, side, (side - width) // 2, (side - height) // 2


def pad_to_square(a: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] centred on a square filled with the median colour of its border."""
    h, w = a.shape[:2]
    side, _, x, y = square_frame(w, h, "pad")
    if x == 0 and y == 0:
        return a
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    fill = np.median(border, axis=0).round().astype(np.uint8)
    square = np.empty((side, side, 3), np.uint8)
    square[:] = fill
    square[y:y + h, x:x + w] = a
    return square


def fit_to_input(image: ImageLike, size: int, resample: str = "bilinear", resize: str = "pad") -> np.ndarray:
    """uint8 [size, size, 3]: the pixels the model sees, before normalisation.

    An image that is not square is padded to a square (``resize="pad"``) or
    stretched (``"stretch"``); it is then resized with PIL (``resample``) only
    when it is not already size x size. Passing the result to the engine gives
    the same answer as passing the image.
    """
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}; choose from {sorted(_RESAMPLE)}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize {resize!r}; choose from {', '.join(RESIZE_MODES)}")
    a = to_rgb_array(image)
    if resize == "pad":
        a = pad_to_square(a)
    if a.shape[0] != size or a.shape[1] != size:
        a = np.asarray(Image.fromarray(a, "RGB").resize((size, size), _RESAMPLE[resample]), dtype=np.uint8)
    return a


def preprocess(image: ImageLike, size: int = 64, mean: Sequence[float] = (0.5, 0.5, 0.5),
               std: Sequence[float] = (0.5, 0.5, 0.5), resample: str = "bilinear",
               resize: str = "pad") -> np.ndarray:
    """One image -> float32 [3, size, size]: ``fit_to_input``, then ``(x / 255 - mean) / std``."""
    a = fit_to_input(image, size, resample, resize)
    # The same float32 operations as (a / 255 - mean) / std, done in place on
    # the channels-first output: no temporaries (a quarter of the time).
    x = np.empty((3, size, size), np.float32)
    np.multiply(a.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=x)
    x -= np.asarray(mean, np.float32)[:, None, None]
    x /= np.asarray(std, np.float32)[:, None, None]
    return x


def preprocess_batch(images: Sequence[ImageLike], size: int = 64,
                     mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                     resample: str = "bilinear", resize: str = "pad") -> np.ndarray:
    """A list of images -> float32 [B, 3, size, size]."""
    if isinstance(images, (np.ndarray, Image.Image, str, os.PathLike)):
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        else:
            images = [images]
    if len(images) == 0:
        raise ValueError("empty list of images")
    return np.stack([preprocess(im, size, mean, std, resample, resize) for im in images])
