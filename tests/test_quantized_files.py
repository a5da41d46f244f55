"""Files quantized at conversion (``pali-engine convert --dtype int8|int4``) against quantizing at load.

The converter writes the codes and scales the engine computes itself when it
loads a float file in that dtype (export/paligemma/quantize.py, the NumPy twin
of prepare_linear's rules): so the native engine's logits from a quantized
file loaded in its dtype are bit for bit those of the float file quantized at
load; loaded in a float dtype it runs on the dequantized weights, as
onnxruntime does on the file's DequantizeLinear graph; the file is smaller;
and a broken quantized file (scales missing or wrong, a code the rules never
write, a dtype that contradicts its metadata) is refused with the reason.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

import pali_engine  # noqa: E402
from pali_engine.errors import ModelFileError  # noqa: E402
from pali_engine.export.paligemma import convert  # noqa: E402
from pali_engine.export.paligemma import quantize  # noqa: E402
from pali_engine.export.paligemma.convert import sample_inputs  # noqa: E402
from pali_engine.model_file import inspect, load_tensor  # noqa: E402

from paligemma_fixtures import build_checkpoint, tokenizer_path  # noqa: E402,F401 (a fixture)

QUANTIZED = ("int8", "int4", "int4_g64", "int4_g128")


@pytest.fixture(scope="module", params=[1, 2], ids=["paligemma1", "paligemma2"])
def files(request, tmp_path_factory, tokenizer_path):
    """{dtype: path}: one checkpoint converted to float32 and to every quantized dtype."""
    folder = tmp_path_factory.mktemp(f"quantized{request.param}")
    hf_dir = str(folder / "hf")
    build_checkpoint(request.param, hf_dir, tokenizer_path)
    out = {}
    for dtype in ("float32",) + QUANTIZED:
        out[dtype] = str(folder / f"{dtype}.onnx")
        report = convert(hf_dir, out[dtype], dtype=dtype)
        assert report["validated"] and report["max_abs_error"] <= 1e-4, report
    return out


def _inputs(path):
    engine = pali_engine.Engine.load(path)
    config = dict(engine.config)
    return [t.numpy() for t in sample_inputs(config, [5, 2], [3, 4], 7)]


def _logits(path, dtype, inputs):
    return pali_engine.Engine.load(path, dtype=dtype, threads=2).logits(*inputs)


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_a_quantized_file_answers_as_quantizing_at_load(files, dtype):
    inputs = _inputs(files["float32"])
    at_load = _logits(files["float32"], dtype, inputs)
    from_file = _logits(files[dtype], dtype, inputs)
    np.testing.assert_array_equal(from_file, at_load)


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_loaded_as_float_it_is_the_dequantized_model(files, dtype):
    inputs = _inputs(files["float32"])
    native = _logits(files[dtype], "float32", inputs)
    reference = pali_engine.Engine.load(files[dtype], backend="onnxruntime").logits(*inputs)
    real = inputs[2].astype(bool)
    assert np.abs(native - reference)[real].max() <= 1e-4


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_the_file_stores_codes_and_scales(files, dtype):
    tensors = inspect(files[dtype])["tensors"]
    floats = inspect(files["float32"])["tensors"]
    group = quantize.GROUPS[dtype]
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    stored, shape = tensors[name]
    assert stored == ("int4" if group else "int8") and shape == floats[name][1]
    scale_dtype, scale_shape = tensors[name + "_scale"]
    assert (scale_dtype, scale_shape) == (("float16", (shape[0], -(-shape[1] // group))) if group
                                          else ("float32", (shape[0],)))
    # What is not a linear layer's weight keeps the checkpoint's float type.
    for kept in ("model.language_model.embed_tokens.weight", "model.vision_tower.embeddings.patch_embedding.weight",
                 "model.language_model.norm.weight"):
        assert tensors[kept] == floats[kept]
    assert inspect(files[dtype])["metadata"]["pali.weights_dtype"] == dtype
    assert os.path.getsize(files[dtype]) < os.path.getsize(files["float32"])


def test_the_codes_are_the_engines(files):
    """The file's int4 codes and scales are those of quantize_int4 on the float file's weights."""
    name = "model.language_model.layers.0.mlp.gate_proj.weight"
    weights = load_tensor(files["float32"], name)
    codes, scales = quantize.quantize_int4(weights, 32)
    stored = load_tensor(files["int4"], name)
    np.testing.assert_array_equal(quantize.unpack_int4(stored.reshape(weights.shape[0], -1)), codes)
    np.testing.assert_array_equal(load_tensor(files["int4"], name + "_scale"), scales)


def test_a_quantized_file_refuses_another_quantized_dtype(files):
    with pytest.raises(ValueError, match="holds int4 weights: load it with dtype 'int4' or a float dtype"):
        pali_engine.Engine.load(files["int4"], dtype="int8")


def _rewrite(path, out, edit):
    """``path`` with its ModelProto edited by ``edit(model)``, saved to ``out`` with inline weights."""
    model = onnx.load(path)
    edit(model)
    onnx.save_model(model, out)
    return out


def test_broken_quantized_files_are_refused(files, tmp_path):
    source = files["int8"]
    name = "model.language_model.layers.0.mlp.up_proj.weight"

    def drop_scale(model):
        keep = [t for t in model.graph.initializer if t.name != name + "_scale"]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)

    def zero_scale(model):
        for t in model.graph.initializer:
            if t.name == name + "_scale":
                values = np.frombuffer(t.raw_data, np.float32).copy()
                values[3] = 0.0
                t.raw_data = values.tobytes()

    def code_minus_128(model):
        for t in model.graph.initializer:
            if t.name == name:
                values = np.frombuffer(t.raw_data, np.int8).copy()
                values[5] = -128
                t.raw_data = values.tobytes()

    def wrong_metadata(model):
        for entry in model.metadata_props:
            if entry.key == "pali.weights_dtype":
                entry.value = "int4"

    cases = [(drop_scale, r"its scales '.*_scale' are missing"),
             (zero_scale, r"holds an invalid scale \(0\) at flat index 3"),
             (code_minus_128, r"holds the code -128 at flat index 5"),
             (wrong_metadata, r"is int8 but 'pali.weights_dtype' is 'int4'")]
    for i, (edit, message) in enumerate(cases):
        broken = _rewrite(source, str(tmp_path / f"broken{i}.onnx"), edit)
        with pytest.raises(ModelFileError, match=message):
            pali_engine.Engine.load(broken, dtype="int8")
    # The process is healthy after the refusals.
    assert pali_engine.Engine.load(source, dtype="int8") is not None


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_a_quantized_file_loads_in_its_own_dtype_by_default(files, dtype):
    assert pali_engine.Engine.load(files[dtype]).dtype == dtype
    assert pali_engine.Engine.load(files["float32"]).dtype == "float32"
    assert pali_engine.Engine.load(files[dtype], backend="onnxruntime").dtype == "float32"


def test_the_command_line_loads_a_quantized_file_in_its_dtype(files, capsys):
    from pali_engine.cli import main

    image = str(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "shapes.png"))
    assert main(["run", "--model", files["int4"], image, "caption en", "--max-new-tokens", "4", "--json"]) == 0
    by_default = capsys.readouterr().out
    assert main(["run", "--model", files["int4"], image, "caption en", "--max-new-tokens", "4", "--json",
                 "--dtype", "int4"]) == 0
    explicit = capsys.readouterr().out
    import json

    strip = lambda text: {k: v for k, v in json.loads(text).items() if k != "timings"}  # noqa: E731
    assert strip(by_default) == strip(explicit)
