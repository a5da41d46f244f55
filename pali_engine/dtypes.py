"""The engine's dtypes: the names ``Engine.load(dtype=...)`` and ``--dtype``
take, and how each stores the model's weights in the native kernels.

The table is the native one (``csrc/models/dtypes.h``), which the C and C++
APIs and ``pali-run`` read too, so every entry point accepts the same names.
"""

from __future__ import annotations

from typing import Dict, Optional

from . import _native

_CORE = _native.core_for("cpu")
_TABLE = _CORE.engine_dtypes()
#: dtype name -> weight format of the native linear layers, the default first.
WEIGHT_FORMATS: Dict[str, str] = {name: fmt for name, fmt, _ in _TABLE}
#: dtype name -> what it means, for help texts.
DTYPE_DOCS: Dict[str, str] = {name: doc for name, _, doc in _TABLE}
DTYPES = tuple(WEIGHT_FORMATS)


def weight_format(dtype: str) -> str:
    """The weight format of ``dtype``; ValueError naming the dtypes otherwise."""
    if dtype not in WEIGHT_FORMATS:
        raise ValueError(f"dtype must be one of {', '.join(WEIGHT_FORMATS)}, got {dtype!r}")
    return WEIGHT_FORMATS[dtype]


def default_dtype(weights_dtype: Optional[str]) -> str:
    """The dtype a model loads in when none is asked for, from its file's ``pali.weights_dtype`` (or
    None): the file's own when it is quantized (``pali-engine convert --dtype int8|int4``), else float32."""
    return _CORE.default_engine_dtype(weights_dtype)
