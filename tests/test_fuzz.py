"""Truncated and corrupted model files raise ModelFileError, never crash the process.

Each case runs in this process: a crash (segfault, abort) fails the whole run,
which is the point. The AddressSanitizer build runs this file too (docs/development.md).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

import pali_engine  # noqa: E402
from onnx_fixtures import every_dtype_arrays, write_model  # noqa: E402


@pytest.fixture(scope="module")
def real_file(tmp_path_factory):
    rng = np.random.default_rng(1234)
    arrays = every_dtype_arrays(rng)
    arrays["weight"] = rng.standard_normal((16, 24)).astype(np.float32)
    path = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    write_model(path, arrays, typed={"int64", "float16", "bool"}, metadata={"pali.config": '{"a": 1}'})
    return path.read_bytes()


def read_everything(path):
    info = pali_engine.inspect(path)
    for name in info["tensors"]:
        pali_engine.load_tensor(path, name)
    return info


def test_unmodified_file_reads(tmp_path, real_file):
    path = tmp_path / "model.onnx"
    path.write_bytes(real_file)
    assert len(read_everything(path)["tensors"]) == 12


def test_every_truncation_raises(tmp_path, real_file):
    path = tmp_path / "cut.onnx"
    step = max(1, len(real_file) // 300)
    for length in range(0, len(real_file), step):
        path.write_bytes(real_file[:length])
        with pytest.raises(pali_engine.ModelFileError):
            read_everything(path)


def test_random_mutations_never_crash(tmp_path, real_file):
    """Flipped bytes: most mutations break the file, some leave it readable; none may crash."""
    rng = np.random.default_rng()
    path = tmp_path / "mutated.onnx"
    raised = 0
    for trial in range(300):
        data = bytearray(real_file)
        for _ in range(int(rng.integers(1, 6))):
            position = int(rng.integers(0, len(data)))
            if rng.random() < 0.5:
                data[position] ^= 1 << int(rng.integers(0, 8))
            else:
                data[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            read_everything(path)
        except pali_engine.ModelFileError:
            raised += 1
    assert raised > 0


def test_hostile_lengths(tmp_path):
    """Hand-made messages with huge or overlong lengths and varints."""
    cases = [
        b"\x3a\xff\xff\xff\xff\x0f",  # graph claims 4 GB
        b"\x3a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # overlong varint
        b"\x08\x07\x3a\x04\x2a\x02\x08\xff",  # initializer with truncated dims
        b"\x08\x07\x3a\x06\x2a\x04\x08\x7f\x10\x01",  # dims, data type, no name
        b"\x08\x07\x3a\x0b\x2a\x09\x08\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # dim of -1
        b"\x0b\x0c",  # group wire types
    ]
    for content in cases:
        path = tmp_path / "hostile.onnx"
        path.write_bytes(content)
        with pytest.raises(pali_engine.ModelFileError):
            read_everything(path)
