"""Small ONNX files written by the onnx package, for testing the engine's own reader."""

from __future__ import annotations

import os

import numpy as np


def write_model(path, arrays, *, typed=(), metadata=None, external=False):
    """Writes an ONNX file whose initializers are `arrays` (name -> array).

    Names in `typed` are stored in the typed fields (float_data, int32_data, ...)
    instead of raw_data. With `external`, large tensors go to NAME.onnx.data.
    """
    import onnx
    from onnx import helper, numpy_helper

    initializers = []
    for name, array in arrays.items():
        if name in typed:
            data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
            tensor = helper.make_tensor(name, data_type, list(array.shape), array.reshape(-1).tolist())
        else:
            tensor = numpy_helper.from_array(array, name)
        initializers.append(tensor)
    graph = helper.make_graph([], "weights", [], [], initializer=initializers)
    model = helper.make_model(graph, producer_name="pali-engine-tests")
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    if external:
        onnx.save_model(
            model,
            os.fspath(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=os.path.basename(os.fspath(path)) + ".data",
            size_threshold=64,
        )
    else:
        onnx.save_model(model, os.fspath(path))
    return model


def every_dtype_arrays(rng):
    """One array of each dtype the engine supports, with odd shapes and extreme values."""
    return {
        "float32": rng.standard_normal((3, 5)).astype(np.float32),
        "float64": rng.standard_normal((2, 1, 3)),
        "float16": rng.standard_normal((7,)).astype(np.float16),
        "int8": rng.integers(-128, 128, (4, 3), dtype=np.int8),
        "uint8": rng.integers(0, 256, (9,), dtype=np.uint8),
        "int16": rng.integers(-(2**15), 2**15, (5,), dtype=np.int16),
        "int32": rng.integers(-(2**31), 2**31, (2, 2), dtype=np.int32),
        "int64": rng.integers(-(2**62), 2**62, (3,), dtype=np.int64),
        "bool": rng.integers(0, 2, (6,)).astype(bool),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
