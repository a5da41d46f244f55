"""Convert a Hugging Face PaliGemma directory to the pali-engine ONNX format, streaming the weights.

Why: the ONNX file is the contract between export/ and every runtime, and
onnxruntime running it as is is the oracle the native engine is checked
against; so the file holds the teacher-forced graph, every weight once under
its Hugging Face name (docs/paligemma.md), and the config, tokenizer and image
settings in ``metadata_props``.

    pali-engine convert HF_DIR -o paligemma.onnx [--dtype float32|bfloat16|float16|int8|int4|int4_g64|int4_g128]

A checkpoint may be larger than memory (PaliGemma 2 at 10B is 20 GB in
bfloat16), so nothing holds the model: the graph is built from the config
alone (``graph``), and each weight goes from its safetensors shard to the file
in chunks, converted to the storage dtype on the way (``writer``).  The
resident memory is the graph, one chunk, and the onnxruntime check when it
runs.

The conversion checks itself before it moves the file into place, as the
"pali" exporter does (export/onnx_export.py): the checkpoint's tensor names,
shapes and dtypes against ``expected_parameter_shapes`` before anything is
written; in the written file, read back with the engine's own reader, the
metadata, the initializer names (each once), dtypes and shapes, and every
tensor's bytes (by their hash) equal to what was written; ``onnx.checker``;
and, by default for models small enough to hold twice in memory, onnxruntime
logits against the PyTorch module (``model.PaliGemma``) holding the stored
weights, on a one-row batch with a suffix and a left-padded batch of two.

float16/bfloat16: the weights are stored in that dtype under the same names and
each is read through a ``Cast`` to float32, so the graph computes in float32
with the weights rounded to the storage dtype (exact for a checkpoint that is
already in it).  Rounding is torch's: the source values widened to float32,
then ``Tensor.to(torch.bfloat16)``, or NumPy's ``astype(float16)``.

int8/int4 (``quantize``): the linear layers' weights (and an untied output
layer) are stored as the engine quantizes them at load, codes beside their
scales, each read through ``DequantizeLinear``; the other weights keep the
checkpoint's float type (float32 for float64 or mixed checkpoints).  The
engine loads such a file in its own dtype without quantizing again, or in a
float dtype with the dequantized weights.
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..onnx_export import EXTERNAL_DATA_BYTES, FORMAT_VERSION, MAX_CONSTANT_ELEMENTS, OPSET, ExportError
from . import checkpoint as ckpt
from . import quantize
from .graph import INPUT_NAMES, SCALE_SUFFIX, STORAGE_TYPES, build_graph
from .writer import StreamedTensor, checker_twin, digest, write_model

FLOAT_DTYPES = ("float32", "bfloat16", "float16")
DTYPES = FLOAT_DTYPES + tuple(quantize.GROUPS)
#: ONNX data types of the quantized codes and scales.
ONNX_INT8, ONNX_INT4, ONNX_FLOAT, ONNX_FLOAT16 = 3, 22, 1, 10
#: Max abs error of onnxruntime logits vs the PyTorch module (both float32 compute).
LOGITS_TOLERANCE = 1e-4
#: Without an explicit choice, the onnxruntime check runs only up to this many parameters: it holds the
#: float32 PyTorch module and an onnxruntime session at once (about 12 bytes per parameter).
VALIDATE_MAX_PARAMETERS = 100_000_000
#: Bytes of a checkpoint tensor read and converted at a time.
CHUNK_BYTES = 32 * 2**20
_TORCH_SOURCE_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


# --------------------------------------------------------------------------
# weights

def stored_chunk(chunk, source_dtype: str, dtype: str) -> np.ndarray:
    """A chunk of a checkpoint tensor (raw bytes of safetensors dtype ``source_dtype``) as stored:
    float32 or float16 values, bfloat16 as int16 bits; widened to float32 first, as the PyTorch module's
    parameters were."""
    import torch

    values = torch.frombuffer(chunk, dtype=getattr(torch, _TORCH_SOURCE_DTYPES[source_dtype])).to(torch.float32)
    if dtype == "bfloat16":
        return values.to(torch.bfloat16).view(torch.int16).numpy()
    if dtype == "float16":
        return values.numpy().astype(np.float16)
    return values.numpy()


def _streamed(entry: ckpt.WeightEntry, dtype: str) -> StreamedTensor:
    itemsize = 4 if dtype == "float32" else 2

    def chunks():
        for chunk in ckpt.read_chunks(entry, CHUNK_BYTES):
            yield memoryview(stored_chunk(chunk, entry.dtype, dtype)).cast("B")

    elements = int(np.prod(entry.shape, dtype=np.int64))
    return StreamedTensor(entry.name, list(entry.shape), STORAGE_TYPES[dtype], elements * itemsize, chunks)


class _QuantizedWeight:
    """A linear layer's weight quantized as it streams: its codes, then its scales (kept from the codes' pass)."""

    def __init__(self, entry: ckpt.WeightEntry, dtype: str):
        self.entry, self.group = entry, quantize.GROUPS[dtype]
        self.rows, self.k = int(entry.shape[0]), int(entry.shape[1])
        if self.group is not None and self.k % 2:
            raise ExportError(f"tensor {entry.name}: int4 needs an even number of inputs, it has {self.k}")
        self._scales: List[np.ndarray] = []

    def _quantized_chunks(self):
        row_bytes = self.k * ckpt.FLOAT_DTYPES[self.entry.dtype]
        for chunk in ckpt.read_chunks(self.entry, max(1, CHUNK_BYTES // row_bytes) * row_bytes):
            rows = stored_chunk(chunk, self.entry.dtype, "float32").reshape(-1, self.k)
            if not np.isfinite(rows).all():
                raise ExportError(f"tensor {self.entry.name} holds a non-finite value (NaN or infinity)")
            if self.group is None:
                yield quantize.quantize_int8(rows)
            else:
                codes, scales = quantize.quantize_int4(rows, self.group)
                yield quantize.pack_int4(codes), scales

    def codes(self) -> StreamedTensor:
        def chunks():
            self._scales = []
            for codes, scales in self._quantized_chunks():
                self._scales.append(scales)
                yield memoryview(np.ascontiguousarray(codes)).cast("B")

        int4 = self.group is not None
        return StreamedTensor(self.entry.name, [self.rows, self.k], ONNX_INT4 if int4 else ONNX_INT8,
                              self.rows * self.k // (2 if int4 else 1), chunks)

    def scales(self) -> StreamedTensor:
        int4 = self.group is not None
        shape = [self.rows, -(-self.k // self.group)] if int4 else [self.rows]

        def chunks():
            if not self._scales:  # written before the codes: one pass of its own
                self._scales = [scales for _, scales in self._quantized_chunks()]
            for scales in self._scales:
                yield memoryview(np.ascontiguousarray(scales)).cast("B")

        return StreamedTensor(self.entry.name + SCALE_SUFFIX, shape, ONNX_FLOAT16 if int4 else ONNX_FLOAT,
                              int(np.prod(shape)) * (2 if int4 else 4), chunks)


def float_storage(dtype: str, source: Optional[str]) -> str:
    """How the weights that are not quantized are stored: ``dtype`` itself for a float dtype; for a
    quantized one, the checkpoint's float type (float32 for float64 or mixed checkpoints)."""
    if dtype in FLOAT_DTYPES:
        return dtype
    return source if source in ("bfloat16", "float16") else "float32"


def stored_tensors(expected: Dict[str, Tuple[int, ...]], storage: str, quantized: Sequence[str],
                   dtype: str) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """{initializer name: (dtype name as the engine's reader gives it, shape)}, scales included."""
    group = quantize.GROUPS.get(dtype)
    out = {}
    for name, shape in expected.items():
        if name not in quantized:
            out[name] = (storage, tuple(shape))
            continue
        out[name] = ("int4" if group else "int8", tuple(shape))
        out[name + SCALE_SUFFIX] = (("float16", (shape[0], -(-shape[1] // group))) if group
                                    else ("float32", (shape[0],)))
    return out


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


# --------------------------------------------------------------------------
# the file's metadata

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


# --------------------------------------------------------------------------
# checks

def check_graph(model, weight_names: Sequence[str], expected: Dict[str, Tuple[int, ...]]) -> None:
    """The graph reads exactly the expected weights (each once as an initializer); no large constants."""
    if sorted(weight_names) != sorted(expected) or len(set(weight_names)) != len(weight_names):
        missing, extra = sorted(set(expected) - set(weight_names)), sorted(set(weight_names) - set(expected))
        raise ExportError(f"the graph's weights differ from expected_parameter_shapes: missing {missing}, "
                          f"extra {extra}")
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and int(np.prod(attr.t.dims)) > MAX_CONSTANT_ELEMENTS:
                raise ExportError(f"node {node.name} ({node.op_type}) holds a constant of shape "
                                  f"{list(attr.t.dims)}: a folded copy of a weight?")


def check_file(path: str, stored: Dict[str, Tuple[str, Tuple[int, ...]]], hashes: Dict[str, str],
               meta: Dict[str, str]) -> None:
    """Reads the written file back with the engine's own reader: metadata, names, dtypes, shapes, and each
    tensor's bytes against the hash of what was written.

    Each tensor is read through its own open of the file, so that no more than one tensor's pages are
    mapped at a time.
    """
    from pali_engine._native import _core
    from pali_engine.model_file import inspect

    info = inspect(path)
    for key, value in meta.items():
        if info["metadata"].get(key) != value:
            raise ExportError(f"{path}: metadata {key} read back differs from what was written")
    tensors = info["tensors"]
    if sorted(tensors) != sorted(stored) or len(tensors) != len(stored):
        raise ExportError(f"{path}: tensors read back differ from the parameters")
    for name, (dtype, shape) in stored.items():
        stored_dtype, stored_shape = tensors[name]
        if stored_dtype != dtype or tuple(stored_shape) != tuple(shape):
            raise ExportError(f"{path}: tensor {name} read back as {stored_dtype}{list(stored_shape)}, "
                              f"expected {dtype}{list(shape)}")
        reader = _core.OnnxFile(path)
        values = reader.tensor(name)
        h = digest()
        h.update(memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8)))
        reader.check_unchanged()
        del values, reader
        if h.hexdigest() != hashes[name]:
            raise ExportError(f"{path}: tensor {name} read back differs from what was written")


def reference_model(path: str, config: dict):
    """The float32 PyTorch module holding the file's stored weights (widened): the oracle of the check."""
    import torch

    from pali_engine.model_file import load_tensor

    from .model import PaliGemma, check_names

    with torch.device("meta"):
        model = PaliGemma(config)
    check_names(model)
    model.to_empty(device="cpu")
    from pali_engine.model_file import inspect

    info = inspect(path)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.from_numpy(stored_values(path, info, name, load_tensor)))
    return model.eval()


def stored_values(path: str, info: Dict, name: str, load_tensor) -> np.ndarray:
    """A weight's float32 values as the file stores them: widened, or dequantized (``info``: the file as
    ``pali_engine.inspect`` describes it)."""
    dtype, shape = info["tensors"][name]
    if dtype not in ("int8", "int4"):
        return np.asarray(load_tensor(path, name), dtype=np.float32)
    scales = np.asarray(load_tensor(path, name + SCALE_SUFFIX))
    if dtype == "int8":
        return quantize.dequantize(np.asarray(load_tensor(path, name)), scales, None)
    codes = quantize.unpack_int4(np.asarray(load_tensor(path, name)).reshape(shape[0], -1))
    return quantize.dequantize(codes, scales, quantize.GROUPS[info["metadata"]["pali.weights_dtype"]])

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
            external_data: Optional[bool] = None, validate: Optional[bool] = None, opset: int = OPSET,
            log: Callable[[str], None] = lambda s: None) -> dict:
    """Converts the Hugging Face PaliGemma directory ``hf_dir`` to ``path`` and checks the file.

    Args:
      dtype: storage of the weights: "float32", "bfloat16" or "float16" (the graph computes in float32), or
        "int8", "int4", "int4_g64", "int4_g128": the linear layers quantized as the engine does it (``quantize``).
      external_data: True: weights to ``path + ".data"``; None: only when they exceed ~2 GB.
      validate: run onnxruntime against the PyTorch module (tolerance LOGITS_TOLERANCE); None: only for
        models of at most VALIDATE_MAX_PARAMETERS parameters (the check holds the model in memory twice).
    Returns a report: {"path", "dtype", "parameters", "bytes", "data_bytes", "validated", "max_abs_error", ...}.
    Raises checkpoint.CheckpointError (a ValueError) naming the file or field it cannot convert,
    ExportError when a check of the written file fails.
    """
    import onnx

    from pali_engine.paligemma_spec import expected_parameter_shapes

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    checkpoint = ckpt.read_checkpoint(hf_dir)
    expected = expected_parameter_shapes(checkpoint.config)
    entries = ckpt.select_weights(checkpoint, expected)
    parameters = int(sum(np.prod(shape, dtype=np.int64) for shape in expected.values()))
    source = ckpt.source_dtype(entries.values())
    log(f"read {checkpoint.directory}: PaliGemma {checkpoint.config['paligemma_version']}, "
        f"{parameters:,} parameters ({source or 'mixed dtypes'})")
    if validate is None:
        validate = parameters <= VALIDATE_MAX_PARAMETERS
    storage = float_storage(dtype, source)
    itemsize = 4 if storage == "float32" else 2
    external = parameters * itemsize > EXTERNAL_DATA_BYTES if external_data is None else bool(external_data)

    quantization = None if dtype in FLOAT_DTYPES else ("int8" if dtype == "int8" else "int4",
                                                       quantize.GROUPS[dtype])
    model, weight_names, quantized = build_graph(checkpoint.config, storage, opset, quantization)
    check_graph(model, weight_names, expected)
    stored = stored_tensors(expected, storage, quantized, dtype)
    meta = metadata(checkpoint.config, checkpoint.tokenizer, dtype)
    _set_metadata(model, meta)

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    report = {"path": path, "dtype": dtype, "source_dtype": source, "external_data": external,
              "parameters": parameters, "validated": bool(validate)}
    # Written and checked in a staging folder, moved into place only when every check passed.
    stage = tempfile.mkdtemp(prefix=".pali-convert-", dir=folder)
    try:
        staged = os.path.join(stage, os.path.basename(path))
        tensors = []
        for name in weight_names:
            if name in quantized:
                weight = _QuantizedWeight(entries[name], dtype)
                tensors += [weight.codes(), weight.scales()]
            else:
                tensors.append(_streamed(entries[name], storage))
        hashes, raw_offsets = write_model(model, tensors, staged, external)
        report["export_s"] = round(time.perf_counter() - t0, 3)
        report["bytes"] = os.path.getsize(staged)
        report["data_bytes"] = os.path.getsize(staged + ".data") if external else 0
        log(f"wrote {len(tensors)} weights ({(report['bytes'] + report['data_bytes']) / 2**30:.2f} GiB) "
            f"in {report['export_s']:.1f} s")
        onnx.checker.check_model(staged if external else checker_twin(model, tensors, staged, raw_offsets))
        del model
        check_file(staged, stored, hashes, meta)
        log(f"checked names, shapes and values of {len(tensors)} weights")
        if validate:
            err = compare_logits(staged, reference_model(staged, checkpoint.config))
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
                        help="storage of the weights (the graph computes in float32 either way); int8 and "
                             "int4 quantize the linear layers as the engine does at load, which then loads "
                             "the file in that dtype without quantizing again")
    parser.add_argument("--external-data", action="store_true",
                        help="write the weights to NAME.onnx.data (automatic above ~2 GB)")
    check = parser.add_mutually_exclusive_group()
    check.add_argument("--validate", dest="validate", action="store_const", const=True, default=None,
                       help="run the onnxruntime vs PyTorch check whatever the size (it holds the model in "
                            f"memory twice; the default runs it up to {VALIDATE_MAX_PARAMETERS:,} parameters)")
    check.add_argument("--no-validate", dest="validate", action="store_const", const=False,
                       help="skip the onnxruntime vs PyTorch check")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    report = convert(args.hf_dir, args.output, dtype=args.dtype,
                     external_data=True if args.external_data else None,
                     validate=args.validate, opset=args.opset, log=log)
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
