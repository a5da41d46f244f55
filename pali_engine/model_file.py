"""Reading model files: ``inspect`` and ``load_tensor``, on the engine's own ONNX reader.

No onnx or protobuf package is needed: the native reader maps the file and
checks every length and offset, raising ModelFileError naming the file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._native import _core


def _open(path: str | os.PathLike) -> "_core.OnnxFile":
    return _core.OnnxFile(os.fspath(path))


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Describes an ONNX model file without loading its weights.

    Returns:
      {"metadata": {key: value (str)}, "tensors": {name: (dtype name, shape tuple)},
       "ir_version": int, "opset_version": int, "producer_name": str}
      Tensors are listed in file order.
    """
    model = _open(path)
    return {
        "metadata": model.metadata,
        "tensors": {name: model.tensor_info(name) for name in model.tensor_names},
        "ir_version": model.ir_version,
        "opset_version": model.opset_version,
        "producer_name": model.producer_name,
    }


def _bfloat16_dtype():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def load_tensor(path: str | os.PathLike, name: str) -> np.ndarray:
    """One initializer's values as a new writable array of the file's dtype.

    bfloat16 comes back as ``ml_dtypes.bfloat16`` when ml_dtypes is installed,
    otherwise as exactly converted float32.
    """
    model = _open(path)
    dtype, _ = model.tensor_info(name)
    values = model.tensor(name)
    if dtype == "bfloat16":
        bf16 = _bfloat16_dtype()
        out = values.view(bf16).copy() if bf16 is not None else (values.astype(np.uint32) << 16).view(np.float32)
    else:
        out = np.array(values, copy=True)
    # The copy is good only if the file did not change while it was read.
    model.check_unchanged()
    return out
