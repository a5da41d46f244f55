"""The engine's quantization rules in NumPy, bit for bit, for files quantized at conversion.

Why: ``pali-engine convert --dtype int8|int4`` writes the codes and scales the
engine computes itself when it loads a float file in that dtype
(``prepare_linear`` in csrc/ops/linear_cpu.cc), so that a quantized file
answers exactly as quantizing at load does, loads without quantizing, and
takes a quarter (int8) or an eighth (int4) of float32's bytes for its linear
layers.  Each rule works on whole rows [rows, K] of float32 values:

* int8, per output row: ``scale = max|w| / 127`` (1 for a row of zeros),
  ``code = round(w / scale)`` (halves away from zero), within [-127, 127];
  scales float32 [rows].
* int4, per output row and group of ``group`` consecutive k (the last group
  may be shorter): ``v`` = the group's first value of largest magnitude,
  ``scale = float16(v / -8)`` (1 when that is zero or not finite),
  ``code = copysign(floor(|w / scale| + 0.5), w / scale)`` within [-8, 7]
  (llama.cpp's Q4_0); scales float16 [rows, ceil(K / group)], codes stored as
  ONNX INT4 (two a byte, the even k in the low nibble).

``w ≈ code * scale``: the file's graph reads each weight through
``DequantizeLinear``, which computes exactly that.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

#: The quantized dtypes of ``convert --dtype``: their names in the engine's dtype table and int4 group sizes.
GROUPS: Dict[str, Optional[int]] = {"int8": None, "int4": 32, "int4_g64": 64, "int4_g128": 128}


def _round_half_away(t: np.ndarray) -> np.ndarray:
    """std::round in float32: to the nearest integer, halves away from zero."""
    truncated = np.trunc(t)
    return np.where(np.abs(t - truncated) == np.float32(0.5), truncated + np.sign(t), np.rint(t))


def quantize_int8(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """float32 [r, K] -> (int8 codes [r, K], float32 scales [r])."""
    rows = np.asarray(rows, dtype=np.float32)
    largest = np.abs(rows).max(axis=1)
    scales = np.where(largest > 0, largest / np.float32(127), np.float32(1)).astype(np.float32)
    codes = np.clip(_round_half_away(rows / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales


def quantize_int4(rows: np.ndarray, group: int) -> Tuple[np.ndarray, np.ndarray]:
    """float32 [r, K] -> (int8 codes in [-8, 7], [r, K]; float16 scales [r, ceil(K / group)])."""
    rows = np.asarray(rows, dtype=np.float32)
    r, k = rows.shape
    groups = -(-k // group)
    padded = np.zeros((r, groups * group), np.float32)
    padded[:, :k] = rows
    blocks = padded.reshape(r, groups, group)
    magnitude = np.abs(blocks)
    first_largest = np.argmax(magnitude == magnitude.max(axis=2, keepdims=True), axis=2)
    extreme = np.take_along_axis(blocks, first_largest[..., None], axis=2)[..., 0]
    with np.errstate(over="ignore"):
        scales = np.clip(extreme / np.float32(-8), np.float32(-65504), np.float32(65504)).astype(np.float16)
    widened = scales.astype(np.float32)
    bad = (widened == 0) | ~np.isfinite(widened)
    scales[bad] = np.float16(1)
    widened[bad] = np.float32(1)
    t = blocks / widened[..., None]
    codes = np.clip(np.copysign(np.floor(np.abs(t) + np.float32(0.5)), t), -8, 7).astype(np.int8)
    return codes.reshape(r, groups * group)[:, :k], scales


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """int8 codes in [-8, 7], [r, K] with K even -> ONNX INT4 bytes, uint8 [r, K / 2]."""
    nibbles = (codes.astype(np.int16) & 0xF).astype(np.uint8)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """ONNX INT4 bytes uint8 [r, K / 2] -> int8 codes [r, K]."""
    packed = np.asarray(packed, dtype=np.uint8)
    nibbles = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(packed.shape[0], -1).astype(np.int8)
    return np.where(nibbles >= 8, nibbles - 16, nibbles).astype(np.int8)


def dequantize(codes: np.ndarray, scales: np.ndarray, group: Optional[int]) -> np.ndarray:
    """The float32 values a weight's codes stand for (DequantizeLinear): int8 codes [r, K] with float32
    scales [r] (group None), or int4 codes [r, K] with float16 scales [r, ceil(K / group)]."""
    codes = codes.astype(np.float32)
    if group is None:
        return codes * np.asarray(scales, np.float32)[:, None]
    widened = np.repeat(np.asarray(scales).astype(np.float32), group, axis=1)[:, :codes.shape[1]]
    return codes * widened
