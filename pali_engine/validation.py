"""Checks of array arguments shared by the processors: one short line saying what is wrong.

Why a module of its own: every architecture's processor checks the arrays a
caller passes to ``Engine.logits`` the same way, and the processors must not
import the backends that hold them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import short_repr


def as_array(value: Any, name: str, rank: int, kinds: str, what: str) -> np.ndarray:
    """``value`` as an array of ``rank`` dimensions whose dtype kind is one of ``kinds``."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as error:  # ragged or unconvertible lists
        reason = str(error).split(".")[0]
        raise ValueError(f"{name} must be an array of {what}: {short_repr(reason, 120)}") from None
    if array.dtype.kind not in kinds:
        raise ValueError(f"{name} must be an array of {what}, got dtype {array.dtype}")
    if array.ndim != rank:
        raise ValueError(f"{name} must have {rank} dimensions, got shape {list(array.shape)}")
    return array


def check_token_ids(ids: np.ndarray, name: str, vocab_size: int) -> None:
    """ValueError when an id of ``ids`` lies outside [0, vocab_size)."""
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} must be token ids in [0, {vocab_size}), got {bad}")


def check_pixel_values(pixel_values: Any, channels: int, size: int) -> np.ndarray:
    """``pixel_values`` as contiguous float32 [batch >= 1, channels, size, size] without NaN or infinity."""
    pixels = as_array(pixel_values, "pixel_values", 4, "fiu", "numbers")
    expected = (channels, size, size)
    if pixels.shape[0] < 1 or pixels.shape[1:] != expected:
        raise ValueError(f"pixel_values must have shape [batch >= 1, {', '.join(map(str, expected))}], "
                         f"got {list(pixels.shape)}")
    with np.errstate(over="ignore"):
        pixels = np.ascontiguousarray(pixels, np.float32)
    non_finite = pixels.size - int(np.count_nonzero(np.isfinite(pixels)))
    if non_finite:
        raise ValueError(f"pixel_values has {non_finite} NaN or infinite values (in float32)")
    return pixels
