"""The engine's ONNX reader against files written by the onnx package."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

import pali_engine  # noqa: E402
from onnx_fixtures import every_dtype_arrays, write_model  # noqa: E402


def reference_arrays(path):
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_same(actual, expected):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.tobytes() == np.ascontiguousarray(expected).tobytes()


@pytest.mark.parametrize("storage", ["raw", "typed"])
def test_every_dtype_round_trips(tmp_path, storage):
    rng = np.random.default_rng()
    arrays = every_dtype_arrays(rng)
    typed = set(arrays) if storage == "typed" else set()
    path = tmp_path / "m.onnx"
    write_model(path, arrays, typed=typed)
    info = pali_engine.inspect(path)
    assert list(info["tensors"]) == list(arrays)
    for name, array in arrays.items():
        assert info["tensors"][name] == (str(array.dtype), array.shape)
        loaded = pali_engine.load_tensor(path, name)
        assert_same(loaded, array)
        assert loaded.flags.writeable


def test_bfloat16(tmp_path):
    from onnx import TensorProto, helper

    values = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, 65280.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    tensor = helper.make_tensor("bf", TensorProto.BFLOAT16, [6], bits.tobytes(), raw=True)
    typed = helper.make_tensor("bf_typed", TensorProto.BFLOAT16, [2, 3], values.tolist())
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[tensor, typed]))
    path = tmp_path / "bf.onnx"
    onnx.save_model(model, str(path))
    assert pali_engine.inspect(path)["tensors"]["bf"] == ("bfloat16", (6,))
    for name in ("bf", "bf_typed"):
        loaded = np.asarray(pali_engine.load_tensor(path, name), dtype=np.float32).reshape(-1)
        assert np.array_equal(loaded, values)


def test_external_data_matches_numpy_helper(tmp_path):
    rng = np.random.default_rng()
    arrays = {
        "big": rng.standard_normal((64, 33)).astype(np.float32),
        "half": rng.standard_normal((17, 9)).astype(np.float16),
        "ids": rng.integers(0, 1000, (50,), dtype=np.int64),
        "tiny": np.array([1, 2], dtype=np.int32),
    }
    path = tmp_path / "ext.onnx"
    write_model(path, arrays, external=True, metadata={"pali.format": "1"})
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    expected = reference_arrays(path)
    assert set(pali_engine.inspect(path)["tensors"]) == set(expected)
    for name, array in expected.items():
        assert_same(pali_engine.load_tensor(path, name), array)


def test_metadata_with_non_ascii_text(tmp_path):
    metadata = {
        "pali.config": '{"caption": "deux cercles rouges", "ru": "два красных круга", "ja": "赤い円"}',
        "emoji": "🟥🔵",
        "empty": "",
    }
    path = tmp_path / "meta.onnx"
    write_model(path, {"w": np.ones(3, np.float32)}, metadata=metadata)
    assert pali_engine.inspect(path)["metadata"] == metadata


def test_native_view_keeps_file_alive(tmp_path):
    from pali_engine import _core

    path = tmp_path / "view.onnx"
    array = np.arange(1024, dtype=np.float32)
    write_model(path, {"w": array})
    view = _core.OnnxFile(str(path)).tensor("w")
    assert not view.flags.writeable
    import gc

    gc.collect()
    assert np.array_equal(view, array)


def test_missing_tensor_names_file_and_tensor(tmp_path):
    path = tmp_path / "m.onnx"
    write_model(path, {"present": np.zeros(2, np.float32)})
    with pytest.raises(pali_engine.ModelFileError, match=r"m\.onnx.*'absent'"):
        pali_engine.load_tensor(path, "absent")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"not an onnx file at all, just text\n", "ONNX"),
        (b"\x08\x07", "no graph"),
    ],
)
def test_not_onnx(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(pali_engine.ModelFileError, match=message) as info:
        pali_engine.inspect(path)
    assert "bad.onnx" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(pali_engine.ModelFileError, match="cannot open"):
        pali_engine.inspect(tmp_path / "nothing.onnx")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(pali_engine.ModelFileError, match="not a regular file"):
        pali_engine.inspect(tmp_path)


def test_external_data_errors(tmp_path):
    rng = np.random.default_rng()
    path = tmp_path / "ext.onnx"
    write_model(path, {"w": rng.standard_normal((32, 32)).astype(np.float32)}, external=True)
    data = tmp_path / "ext.onnx.data"
    content = data.read_bytes()
    data.write_bytes(content[: len(content) // 2])
    with pytest.raises(pali_engine.ModelFileError, match="truncated"):
        pali_engine.inspect(path)
    data.unlink()
    with pytest.raises(pali_engine.ModelFileError, match="missing or unreadable"):
        pali_engine.inspect(path)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "a/../../b"])
def test_external_location_must_stay_inside_the_folder(tmp_path, location):
    from onnx import TensorProto, helper

    tensor = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[tensor]))
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(pali_engine.ModelFileError, match="relative path inside"):
        pali_engine.inspect(path)


def test_inconsistent_sizes(tmp_path):
    from onnx import TensorProto, helper

    short = helper.make_tensor("short", TensorProto.FLOAT, [3], np.zeros(3, np.float32).tobytes(), raw=True)
    short.dims[0] = 4
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[short]))
    path = tmp_path / "short.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(pali_engine.ModelFileError, match="'short'.*12 bytes.*needs 16"):
        pali_engine.inspect(path)

    typed = helper.make_tensor("typed", TensorProto.INT64, [3], [1, 2, 3])
    typed.dims[0] = 5
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[typed]))
    path.write_bytes(model.SerializeToString())
    with pytest.raises(pali_engine.ModelFileError, match="holds 3 values"):
        pali_engine.inspect(path)


def test_duplicate_names_and_keys(tmp_path):
    from onnx import helper

    a = numpy_helper.from_array(np.zeros(2, np.float32), "same")
    b = numpy_helper.from_array(np.ones(2, np.float32), "same")
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[a, b]))
    path = tmp_path / "dup.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(pali_engine.ModelFileError, match="appears twice"):
        pali_engine.inspect(path)


def test_unsupported_dtype_is_named(tmp_path):
    from onnx import TensorProto, helper

    strings = helper.make_tensor("words", TensorProto.STRING, [1], [b"hi"])
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[strings]))
    path = tmp_path / "str.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(pali_engine.ModelFileError, match="'words' has unsupported data type 8"):
        pali_engine.inspect(path)
