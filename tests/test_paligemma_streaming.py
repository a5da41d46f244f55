"""The streaming converter against the file the traced path wrote, and its memory.

The previous converter built the PaliGemma PyTorch module with the weights,
traced it with torch.onnx.export and rewrote the initializers; ``_traced_file``
below does exactly that, and the streamed file must equal it: the same
initializers (names, dtypes, shapes, bytes), the same metadata, the same
native logits bit for bit, onnxruntime's logits bit for bit at its basic graph
optimizations (the fused kernels of the higher levels match the two graphs'
op patterns differently: within the converter's tolerance there).

Memory: a subprocess converts a checkpoint of 2 and one of 30 decoder layers of
a few MB each; the larger model's peak resident memory is the smaller one's,
not the extra layers' (which a converter holding the model would add, twice
over in float32).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

import pali_engine  # noqa: E402
from pali_engine import _native  # noqa: E402
from pali_engine.benchmarks.paligemma_checkpoint import SHAPES, write_checkpoint  # noqa: E402
from pali_engine.export.paligemma import convert  # noqa: E402
from pali_engine.export.paligemma.checkpoint import canonical_name, read_checkpoint  # noqa: E402

from paligemma_fixtures import build_checkpoint, tokenizer_path  # noqa: E402,F401 (a fixture)

# The module (the package's ``convert`` is the function).
converter = importlib.import_module("pali_engine.export.paligemma.convert")

TOLERANCE = 1e-4
DYNAMIC_AXES = {
    "pixel_values": {0: "batch"},
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
    "token_type_ids": {0: "batch", 1: "sequence"},
    "logits": {0: "batch", 1: "sequence"},
}


def _traced_file(hf_dir: str, path: str, dtype: str) -> None:
    """The file as the converter wrote it before it streamed: the float32 module with every weight,
    torch.onnx.export (TorchScript, training mode so that equal weights stay separate initializers),
    then each initializer stored in ``dtype`` and read through a Cast."""
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.torch import load_file

    from pali_engine.export.paligemma.model import PaliGemma

    checkpoint = read_checkpoint(hf_dir)
    model = PaliGemma(checkpoint.config)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for shard in sorted({entry.path for entry in checkpoint.weights}):
            for name, tensor in load_file(shard).items():
                if canonical_name(name) in params:
                    params[canonical_name(name)].copy_(tensor.float())
    raw = path + ".traced"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, converter.sample_inputs(checkpoint.config, [2, 1], [1, 2], seed=0), raw,
                          dynamo=False, input_names=list(converter.INPUT_NAMES), output_names=["logits"],
                          dynamic_axes=DYNAMIC_AXES, opset_version=17, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.TRAINING, export_params=True)
    proto = onnx.load(raw)
    os.remove(raw)
    if dtype != "float32":
        code = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype]
        casts, renamed = [], {}
        for init in proto.graph.initializer:
            values = torch.from_numpy(numpy_helper.to_array(init).copy())
            stored = (values.to(torch.bfloat16).view(torch.int16).numpy() if dtype == "bfloat16"
                      else values.numpy().astype(np.float16))
            init.CopyFrom(helper.make_tensor(init.name, code, list(init.dims), stored.tobytes(), raw=True))
            renamed[init.name] = f"{init.name}::float32"
            casts.append(helper.make_node("Cast", [init.name], [renamed[init.name]], name=f"Cast::{init.name}",
                                          to=TensorProto.FLOAT))
        for node in proto.graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = renamed.get(name, name)
        nodes = casts + list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    converter._set_metadata(proto, converter.metadata(checkpoint.config, checkpoint.tokenizer, dtype))
    onnx.save(proto, path)


def _inputs(config, seed):
    return dict(zip(converter.INPUT_NAMES, (t.numpy() for t in converter.sample_inputs(
        config, [7, 3], [4, 9], seed))))


def _ort_logits(path, inputs, level):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(["logits"], inputs)[0]


def _native_logits(path, inputs):
    config = json.loads(pali_engine.inspect(path)["metadata"]["pali.config"])
    core = _native._core
    model = core.load_model(core.OnnxFile(path), "f32", 1, config)
    return model.forward(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"],
                         inputs["token_type_ids"])


@pytest.mark.parametrize("version, dtype, external", [(1, "float32", False), (1, "float16", True),
                                                      (2, "float32", True), (2, "bfloat16", False)])
def test_streamed_file_equals_the_traced_one(tmp_path, tokenizer_path, version, dtype, external):
    torch.set_num_threads(2)
    hf_dir = str(tmp_path / "hf")
    build_checkpoint(version, hf_dir, tokenizer_path, shard=version == 2)
    streamed, traced = str(tmp_path / "streamed.onnx"), str(tmp_path / "traced.onnx")
    report = convert(hf_dir, streamed, dtype=dtype, external_data=external)
    assert report["validated"] and report["max_abs_error"] <= TOLERANCE
    assert os.path.exists(streamed + ".data") == external
    _traced_file(hf_dir, traced, dtype)

    ours, theirs = pali_engine.inspect(streamed), pali_engine.inspect(traced)
    assert ours["metadata"] == theirs["metadata"]
    assert ours["tensors"] == theirs["tensors"]  # names, dtypes, shapes
    assert (ours["ir_version"], ours["opset_version"]) == (theirs["ir_version"], theirs["opset_version"])
    for name in theirs["tensors"]:
        a, b = pali_engine.load_tensor(streamed, name), pali_engine.load_tensor(traced, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name

    config = json.loads(ours["metadata"]["pali.config"])
    for seed in (3, 4):
        inputs = _inputs(config, seed)
        assert np.array_equal(_native_logits(streamed, inputs), _native_logits(traced, inputs))
        basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        assert np.array_equal(_ort_logits(streamed, inputs, basic), _ort_logits(traced, inputs, basic))
        full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert np.abs(_ort_logits(streamed, inputs, full) - _ort_logits(traced, inputs, full)).max() <= TOLERANCE


def test_large_models_skip_the_pytorch_check_unless_asked(tmp_path, tokenizer_path, monkeypatch):
    hf_dir = str(tmp_path / "hf")
    build_checkpoint(2, hf_dir, tokenizer_path)
    monkeypatch.setattr(converter, "VALIDATE_MAX_PARAMETERS", 1000)
    report = convert(hf_dir, str(tmp_path / "a.onnx"))
    assert not report["validated"] and "max_abs_error" not in report
    report = convert(hf_dir, str(tmp_path / "b.onnx"), validate=True)
    assert report["validated"] and report["max_abs_error"] <= TOLERANCE


def _small_config(layers: int) -> dict:
    """PaliGemma 2 of decoder layers of ~3.4 MB in bfloat16 (a 2 MB float32 largest tensor), a tiny tower."""
    config = json.loads(json.dumps(SHAPES["paligemma2-3b-224"]))
    config["image_token_index"] = 4000
    config["projection_dim"] = 256
    config["text_config"].update(hidden_size=256, intermediate_size=2048, num_hidden_layers=layers,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                 query_pre_attn_scalar=64, vocab_size=4096, num_image_tokens=4)
    config["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=2, image_size=28, num_image_tokens=4, num_positions=4,
                                   projection_dim=256)
    return config


def _peak_rss_kib(hf_dir: str, out: str, external: bool) -> int:
    """ru_maxrss of a fresh interpreter that converts ``hf_dir`` to float32 (no onnxruntime check)."""
    argv = [hf_dir, "-o", out, "--dtype", "float32", "--no-validate", "--quiet"] + (["--external-data"] * external)
    code = ("import resource, sys\n"
            "from pali_engine.export.paligemma import main\n"
            f"assert main({argv!r}) == 0\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's")
@pytest.mark.parametrize("external", [True, False], ids=["external", "inline"])
def test_peak_memory_does_not_grow_with_the_model(tmp_path, external):
    preprocessor = {"size": {"height": 28, "width": 28}, "image_seq_length": 4, "resample": 3,
                    "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    peaks, sizes = {}, {}
    for layers in (2, 30):
        hf_dir = str(tmp_path / f"hf{layers}")
        sizes[layers] = write_checkpoint(hf_dir, _small_config(layers), shard_bytes=40 * 2**20,
                                         preprocessor=preprocessor)["bytes"]
        out = str(tmp_path / f"out{layers}.onnx")
        peaks[layers] = _peak_rss_kib(hf_dir, out, external)
        assert os.path.exists(out + ".data") == external
    extra_float32 = 2 * (sizes[30] - sizes[2])  # what the extra layers weigh once converted
    assert extra_float32 > 180 * 2**20
    growth = (peaks[30] - peaks[2]) * 1024
    assert growth < 48 * 2**20, f"peak grew by {growth / 2**20:.0f} MiB for {extra_float32 / 2**20:.0f} MiB of weights"
