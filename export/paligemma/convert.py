"""Convert a Hugging Face PaliGemma directory to the pali-engine ONNX format.

Why: the ONNX file is the contract between export/ and every runtime, and
onnxruntime running it as is is the oracle the native engine is checked
against; so the file holds the teacher-forced graph, every weight once under
its Hugging Face name (docs/paligemma.md), and the config, tokenizer and image
settings in ``metadata_props``.

    pali-engine convert HF_DIR -o paligemma.onnx [--dtype float32|bfloat16|float16]

The conversion checks itself before it moves the file into place, as the
"pali" exporter does (export/onnx_export.py): initializer names == parameter
names, shapes equal, values bit-exact in the written file read back with the
engine's own reader; ``onnx.checker``; onnxruntime logits against the PyTorch
module on a one-row batch with a suffix and a left-padded batch of two.

float16/bfloat16: the weights are stored in that dtype under the same names and
each is read through a ``Cast`` to float32, so the graph computes in float32
with the weights rounded to the storage dtype (exact for a checkpoint that is
already in it).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..onnx_export import (EXTERNAL_DATA_BYTES, FORMAT_VERSION, MAX_CONSTANT_ELEMENTS, OPSET, ExportError,
                           _same_bits, _save)
from . import checkpoint as ckpt

INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("logits",)
DYNAMIC_AXES = {
    "pixel_values": {0: "batch"},
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
    "token_type_ids": {0: "batch", 1: "sequence"},
    "logits": {0: "batch", 1: "sequence"},
}
DTYPES = ("float32", "bfloat16", "float16")
#: Max abs error of onnxruntime logits vs the PyTorch module (both float32 compute).
LOGITS_TOLERANCE = 1e-4


# --------------------------------------------------------------------------
# model

def build_model(checkpoint: ckpt.Checkpoint):
    """The float32 PyTorch module with the checkpoint's weights, and the checkpoint's dtype."""
    from .model import PaliGemma, check_names, expected_parameter_shapes

    tensors = ckpt.load_weights(checkpoint, expected_parameter_shapes(checkpoint.config))
    source_dtype = ckpt.checkpoint_dtype(tensors)
    model = PaliGemma(checkpoint.config)
    check_names(model)
    model.load_weights(tensors)
    del tensors
    return model.eval(), source_dtype


def _parameters(model) -> Dict[str, np.ndarray]:
    return {name: p.detach().float().numpy() for name, p in model.named_parameters()}


def sample_inputs(config: dict, prompt_lens: Sequence[int], suffix_lens: Sequence[int], seed: int):
    """Inputs as PaliGemmaProcessor lays them out: left padding, <image> x N, <bos>, prompt, suffix, <eos>.

    token_type_ids are 1 on the suffix (and its eos); the prompt's last token stands for the newline.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    n_img, S = config["num_image_tokens"], config["image_size"]
    # ordinary text ids: above the special ids, below the image token (or the vocabulary's end)
    high = min(config["vocab_size"], config["image_token_index"]) if config["image_token_index"] > 4 \
        else config["vocab_size"]
    rows = []
    for prompt, suffix in zip(prompt_lens, suffix_lens):
        text = torch.randint(4, high, (prompt + suffix,), generator=g).tolist()
        ids = [config["image_token_index"]] * n_img + [config["bos_token_id"]] + text + [config["eos_token_id"]]
        types = [0] * (n_img + 1 + prompt) + [1] * (suffix + 1)
        rows.append((ids, types))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), config["pad_token_id"], dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    token_type_ids = torch.zeros(len(rows), length, dtype=torch.long)
    for b, (ids, types) in enumerate(rows):
        input_ids[b, length - len(ids):] = torch.tensor(ids)
        attention_mask[b, length - len(ids):] = 1
        token_type_ids[b, length - len(ids):] = torch.tensor(types)
    pixel_values = torch.rand(len(rows), 3, S, S, generator=g) * 2 - 1
    return pixel_values, input_ids, attention_mask, token_type_ids


#: (prompt lengths, suffix lengths, seed) of the self-check: one row with a suffix, a padded pair.
VALIDATION_CASES = (([3], [4], 1), ([6, 2], [3, 5], 2))


def _torch_export(model, path: str, opset: int) -> None:
    import torch

    args = sample_inputs(model.config, [2, 1], [1, 2], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, path, dynamo=False,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), dynamic_axes=DYNAMIC_AXES,
            opset_version=opset, do_constant_folding=False, keep_initializers_as_inputs=False,
            # Eval mode would merge parameters with equal values into one initializer.
            training=torch.onnx.TrainingMode.TRAINING, export_params=True,
        )
    model.eval()


# --------------------------------------------------------------------------
# storage and checks

def _storage_bits(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> the stored array (float32/float16 values, bfloat16 as uint16 bits), rounded as torch does."""
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(np.array(values, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return values.astype(dtype)


def _as_bits(values: np.ndarray) -> np.ndarray:
    """A loaded tensor as comparable raw values (bfloat16 -> uint16 bits)."""
    if values.dtype.name == "bfloat16":
        return values.view(np.uint16)
    return values


def _to_storage(model_proto, dtype: str) -> None:
    """float32 initializers -> ``dtype`` initializers (same names), each read through a Cast to float32."""
    from onnx import TensorProto, helper, numpy_helper

    code = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype]
    casts, renamed = [], {}
    for init in model_proto.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        stored = _storage_bits(numpy_helper.to_array(init), dtype)
        init.CopyFrom(helper.make_tensor(init.name, code, list(init.dims), stored.tobytes(), raw=True))
        renamed[init.name] = f"{init.name}::float32"
        casts.append(helper.make_node("Cast", [init.name], [renamed[init.name]], name=f"Cast::{init.name}",
                                      to=TensorProto.FLOAT))
    for node in model_proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    nodes = casts + list(model_proto.graph.node)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(nodes)


def _check_initializers(model_proto, params: Dict[str, np.ndarray]) -> None:
    """float32 initializers == parameters: names (each once), shapes, bit-exact values; no folded weights."""
    from onnx import numpy_helper

    names = [init.name for init in model_proto.graph.initializer]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    missing, extra = sorted(set(params) - set(names)), sorted(set(names) - set(params))
    if duplicated or missing or extra:
        raise ExportError(f"initializers differ from the parameters: duplicated {duplicated}, missing {missing}, "
                          f"extra (renamed or folded) {extra}")
    for init in model_proto.graph.initializer:
        if not _same_bits(numpy_helper.to_array(init), params[init.name]):
            raise ExportError(f"initializer {init.name}: values or shape differ from the parameter")
    for node in model_proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and int(np.prod(attr.t.dims)) > MAX_CONSTANT_ELEMENTS:
                raise ExportError(f"node {node.name} ({node.op_type}) holds a constant of shape "
                                  f"{list(attr.t.dims)}: a folded copy of a weight?")


def metadata(config: dict, tokenizer: bytes, dtype: str) -> Dict[str, str]:
    return {
        "pali.format": FORMAT_VERSION,
        "pali.config": json.dumps(config),
        "pali.tokenizer": base64.b64encode(tokenizer).decode("ascii"),
        "pali.weights_dtype": dtype,
    }


def _set_metadata(model_proto, meta: Dict[str, str]) -> None:
    from pali_engine._version import __version__

    del model_proto.metadata_props[:]
    for key, value in meta.items():
        model_proto.metadata_props.add(key=key, value=value)
    model_proto.producer_name = "pali-engine"
    model_proto.producer_version = __version__
    model_proto.doc_string = "PaliGemma teacher-forced forward; see docs/paligemma.md in pali-engine"


def check_file(path: str, params: Dict[str, np.ndarray], dtype: str, meta: Dict[str, str]) -> None:
    """Reads the written file back with the engine's own reader: metadata, names, shapes, bit-exact values."""
    from pali_engine.model_file import inspect, load_tensor

    info = inspect(path)
    for key, value in meta.items():
        if info["metadata"].get(key) != value:
            raise ExportError(f"{path}: metadata {key} read back differs from what was written")
    tensors = info["tensors"]
    if sorted(tensors) != sorted(params):
        raise ExportError(f"{path}: tensors read back differ from the parameters")
    for name, values in params.items():
        want = _storage_bits(values, dtype)
        stored_dtype, shape = tensors[name]
        if stored_dtype != dtype or tuple(shape) != values.shape:
            raise ExportError(f"{path}: tensor {name} read back as {stored_dtype}{list(shape)}, "
                              f"expected {dtype}{list(values.shape)}")
        got = _as_bits(load_tensor(path, name))
        if got.dtype == np.float32 and dtype == "bfloat16":  # no ml_dtypes: exactly widened bits
            got = (got.view(np.uint32) >> 16).astype(np.uint16)
        if not _same_bits(got, want):
            raise ExportError(f"{path}: tensor {name} read back differs from the parameter")


def _rounded(model, dtype: str):
    """``model`` with its weights rounded to ``dtype`` (computing in float32): the stored file's model."""
    import copy

    import torch

    if dtype == "float32":
        return model
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(p.to(getattr(torch, dtype)).float())
    return twin.eval()


def compare_logits(path: str, model, threads: Optional[int] = None) -> float:
    """Max abs error of onnxruntime running ``path`` vs ``model`` on VALIDATION_CASES (real tokens only)."""
    import torch

    from ..onnx_export import check_session

    session = check_session(path, threads)
    worst = 0.0
    for prompts, suffixes, seed in VALIDATION_CASES:
        inputs = sample_inputs(model.config, prompts, suffixes, seed)
        with torch.no_grad():
            reference = model(*inputs).numpy()
        (out,) = session.run(["logits"], dict(zip(INPUT_NAMES, (t.numpy() for t in inputs))))
        if out.shape != reference.shape or out.dtype != np.float32:
            raise ExportError(f"onnxruntime logits {out.dtype}{list(out.shape)}, "
                              f"expected float32{list(reference.shape)}")
        real = inputs[2].numpy().astype(bool)
        worst = max(worst, float(np.abs(out - reference)[real].max()))
    return worst


# --------------------------------------------------------------------------
# the converter

def convert(hf_dir: str | os.PathLike, path: str | os.PathLike, *, dtype: str = "float32",
            external_data: Optional[bool] = None, validate: bool = True, opset: int = OPSET,
            log: Callable[[str], None] = lambda s: None) -> dict:
    """Converts the Hugging Face PaliGemma directory ``hf_dir`` to ``path`` and checks the file.

    Args:
      dtype: storage of the weights: "float32", "bfloat16" or "float16" (the graph computes in float32).
      external_data: True: weights to ``path + ".data"``; None: only when they exceed ~2 GB.
      validate: run onnxruntime against the PyTorch module (tolerance LOGITS_TOLERANCE).
    Returns a report: {"path", "dtype", "parameters", "bytes", "data_bytes", "max_abs_error", ...}.
    Raises checkpoint.CheckpointError (a ValueError) naming the file or field it cannot convert,
    ExportError when a check of the written file fails.
    """
    import onnx

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    checkpoint = ckpt.read_checkpoint(hf_dir)
    model, source_dtype = build_model(checkpoint)
    params = _parameters(model)
    log(f"read {checkpoint.directory}: PaliGemma {checkpoint.config['paligemma_version']}, "
        f"{sum(v.size for v in params.values()):,} parameters ({source_dtype or 'mixed dtypes'})")
    itemsize = 4 if dtype == "float32" else 2
    external = (sum(v.size for v in params.values()) * itemsize > EXTERNAL_DATA_BYTES
                if external_data is None else bool(external_data))
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    meta = metadata(checkpoint.config, checkpoint.tokenizer, dtype)
    report = {"path": path, "dtype": dtype, "source_dtype": source_dtype, "external_data": external,
              "parameters": int(sum(v.size for v in params.values()))}
    # Written and checked in a staging folder, moved into place only when every check passed.
    stage = tempfile.mkdtemp(prefix=".pali-convert-", dir=folder)
    try:
        raw = os.path.join(stage, "torch", "model.onnx")
        os.makedirs(os.path.dirname(raw))
        _torch_export(model, raw, opset)
        proto = onnx.load(raw)
        shutil.rmtree(os.path.dirname(raw))
        _check_initializers(proto, params)
        if dtype != "float32":
            _to_storage(proto, dtype)
        _set_metadata(proto, meta)
        staged = os.path.join(stage, os.path.basename(path))
        _save(proto, staged, external)
        del proto
        report["export_s"] = round(time.perf_counter() - t0, 3)
        log(f"wrote the graph in {report['export_s']:.1f} s")
        onnx.checker.check_model(staged)
        check_file(staged, params, dtype, meta)
        report["bytes"] = os.path.getsize(staged)
        report["data_bytes"] = os.path.getsize(staged + ".data") if external else 0
        log(f"checked names, shapes and values of {len(params)} weights")
        if validate:
            reference = _rounded(model, dtype)
            err = compare_logits(staged, reference)
            report["max_abs_error"], report["tolerance"] = err, LOGITS_TOLERANCE
            log(f"onnxruntime vs PyTorch logits: max abs error {err:.3g} (tolerance {LOGITS_TOLERANCE:g})")
            if not err <= LOGITS_TOLERANCE:
                raise ExportError(f"{path}: onnxruntime logits differ from PyTorch by {err:.3g} "
                                  f"> {LOGITS_TOLERANCE:g}")
        if external:
            os.replace(staged + ".data", path + ".data")
        elif os.path.exists(path + ".data"):
            os.remove(path + ".data")  # a stale data file of an earlier conversion
        os.replace(staged, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - t0, 3)
    return report


# --------------------------------------------------------------------------
# command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", help="a local Hugging Face PaliGemma directory (config.json, safetensors, "
                                       "tokenizer.model, preprocessor_config.json)")
    parser.add_argument("-o", "--output", required=True, help="the ONNX file to write (NAME.onnx)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="storage of the weights; the graph computes in float32 either way")
    parser.add_argument("--external-data", action="store_true",
                        help="write the weights to NAME.onnx.data (automatic above ~2 GB)")
    parser.add_argument("--no-validate", action="store_true", help="skip the onnxruntime vs PyTorch check")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    report = convert(args.hf_dir, args.output, dtype=args.dtype,
                     external_data=True if args.external_data else None,
                     validate=not args.no_validate, opset=args.opset, log=log)
    size = report["bytes"] + report["data_bytes"]
    print(f"{report['path']}: {report['parameters']:,} parameters, {report['dtype']}, {size / 2**20:.1f} MiB"
          + (" (external data)" if report["external_data"] else "")
          + (f", max abs error {report['max_abs_error']:.2g}" if "max_abs_error" in report else ""))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``pali-engine convert HF_DIR -o OUT.onnx [--dtype ...]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="pali-engine convert",
                                     description="convert a Hugging Face PaliGemma directory to ONNX")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ImportError as error:
        print(f"pali-engine convert: {error}; install what it needs with: "
              "pip install torch==2.13.0 onnx onnxscript onnxruntime safetensors", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"pali-engine convert: error: {error}", file=sys.stderr)
        return 1
