"""Export a PaLI checkpoint to the pali-engine ONNX format (docs/onnx_format.md).

Why: the ONNX file is the contract between export/ and every runtime (the
native engine, the onnxruntime reference backend): the teacher-forced graph
that onnxruntime runs as is, every parameter once under its ``state_dict``
name in PyTorch layout, and the config and tokenizer in ``metadata_props``.

    pali-engine export CHECKPOINT -o pali.onnx [--dtype float32|float16] [--external-data]

The export checks itself before it returns: initializer names == state_dict
names, shapes equal, values bit-exact (in the file, read back with the
engine's own reader); ``onnx.checker``; then onnxruntime logits against
PyTorch at batch 1 and batch 3 (prompts of different lengths, padded).

Graph construction: TorchScript exporter (``dynamo=False``) with constant
folding off, exported in training mode: in eval mode that exporter merges
parameters with equal values (e.g. freshly initialised norm weights) into one
initializer, and the dynamo exporter folds weight transposes into renamed
copies; this way every parameter stays one initializer under its own name.

float16: parameters are stored as float16 initializers (same names), each read
through a ``Cast`` to float32, so the graph computes in float32 exactly as the
float32 export does with weights rounded to float16.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, Optional, Tuple

import numpy as np

FORMAT_VERSION = "1"
OPSET = 17
INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask", "decoder_input_ids")
OUTPUT_NAMES = ("logits",)
DYNAMIC_AXES = {
    "pixel_values": {0: "batch"},
    "input_ids": {0: "batch", 1: "prompt_len"},
    "attention_mask": {0: "batch", 1: "prompt_len"},
    "decoder_input_ids": {0: "batch", 1: "decoder_len"},
    "logits": {0: "batch", 1: "decoder_len"},
}
#: Protobuf cannot serialise a message of 2 GiB or more; above this many bytes of
#: weights (leaving room for the graph and metadata) they go to NAME.onnx.data.
EXTERNAL_DATA_BYTES = 2**31 - 2**26
#: Tensors of at least this many bytes go to the external data file (onnx's default;
#: 0 would move small shape constants too, which breaks onnxruntime).
EXTERNAL_SIZE_THRESHOLD = 1024
#: Offsets of tensors in the external data file are multiples of this (page size),
#: so a runtime can map them directly.
EXTERNAL_ALIGNMENT = 4096
#: The largest constant the graph may hold (elements); anything larger would be a
#: folded copy of a weight.
MAX_CONSTANT_ELEMENTS = 64
#: Validation tolerance: max abs error of onnxruntime logits vs PyTorch (float32 compute).
LOGITS_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported file does not satisfy the format contract (a bug, not bad input)."""


def _same_bits(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 26) -> bool:
    """Bitwise equality of two arrays (dtype, shape, bytes), compared in chunks to bound memory."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a8 = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    b8 = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    return all(a8[i:i + chunk].tobytes() == b8[i:i + chunk].tobytes() for i in range(0, a8.size, chunk))


# --------------------------------------------------------------------------
# checkpoint and tokenizer

def load_checkpoint(path: str, tokenizer: Optional[str] = None):
    """(Pali model in float32 eval mode, SentencePiece bytes) from a checkpoint written by Pali.save.

    The tokenizer is ``tokenizer`` when given, else ``tokenizer.model`` beside the checkpoint.
    """
    from .model import Pali

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        model = Pali.load(path)
    except Exception as error:  # torch.load raises many kinds of errors for a bad file
        raise ValueError(f"{path}: cannot read the checkpoint: {error}") from None
    tok_path = tokenizer or os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer.model")
    if not os.path.isfile(tok_path):
        raise ValueError(
            f"no tokenizer: {tok_path} does not exist; pass the SentencePiece model with --tokenizer"
        )
    with open(tok_path, "rb") as f:
        tok_bytes = f.read()
    return model, tok_bytes


def _check_tokenizer(tok_bytes: bytes, config) -> None:
    from pali_engine.tokenizer import Tokenizer

    tok = Tokenizer(tok_bytes)  # ValueError when not a SentencePiece model
    if tok.vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} pieces but the model's vocab_size is {config.vocab_size}"
        )


# --------------------------------------------------------------------------
# graph

def _dummy_inputs(config, batch: int, prompt_lens, dec_len: int, seed: int):
    """Random model inputs: prompts of the given lengths (eos-terminated, right-padded)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    S, V = config.image_size, config.vocab_size
    L = max(prompt_lens)
    px = torch.rand(batch, config.num_channels, S, S, generator=g) * 2 - 1
    ids = torch.full((batch, L), config.pad_token_id, dtype=torch.long)
    mask = torch.zeros(batch, L, dtype=torch.long)
    for b, n in enumerate(prompt_lens):
        ids[b, : n - 1] = torch.randint(3, V, (n - 1,), generator=g)
        ids[b, n - 1] = config.eos_token_id
        mask[b, :n] = 1
    dec = torch.randint(3, V, (batch, dec_len), generator=g)
    dec[:, 0] = config.decoder_start_token_id
    return px, ids, mask, dec


def _torch_export(model, path: str, opset: int) -> None:
    import torch

    config = model.config
    args = _dummy_inputs(config, 2, [min(3, config.max_prompt_tokens), 2], 2, seed=0)
    was_training = model.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            path,
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=DYNAMIC_AXES,
            opset_version=opset,
            do_constant_folding=False,
            keep_initializers_as_inputs=False,
            # Eval mode would merge parameters with equal values (dedup by value).
            training=torch.onnx.TrainingMode.TRAINING,
            export_params=True,
        )
    model.train(was_training)


def _parameters(model) -> Dict[str, "np.ndarray"]:
    """The parameters the file must hold: state_dict minus an unused lm_head when tied."""
    from pali_engine.model_spec import expected_parameter_shapes

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    expected = expected_parameter_shapes(model.config)
    extra = set(sd) - set(expected)
    if model.config.tie_word_embeddings:
        extra.discard("lm_head.weight")  # the model keeps an unused lm_head when tied
    missing = set(expected) - set(sd)
    if extra or missing:
        raise ExportError(
            f"the model's state_dict does not match model_spec.expected_parameter_shapes: "
            f"missing {sorted(missing)}, extra {sorted(extra)}"
        )
    out = {}
    for name, shape in expected.items():
        t = sd[name]
        if tuple(t.shape) != tuple(shape):
            raise ExportError(f"state_dict {name} has shape {tuple(t.shape)}, model_spec says {shape}")
        out[name] = t.float().numpy()
    return out


def _check_initializers(model_proto, params: Dict[str, np.ndarray], dtype: np.dtype) -> None:
    """Initializer names == parameter names (each once), shapes equal, values bit-exact."""
    from onnx import numpy_helper

    names = [init.name for init in model_proto.graph.initializer]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ExportError(f"initializers stored more than once: {dup}")
    missing = sorted(set(params) - set(names))
    extra = sorted(set(names) - set(params))
    if missing or extra:
        raise ExportError(f"initializers differ from the state_dict: missing {missing}, extra (renamed or folded) {extra}")
    for init in model_proto.graph.initializer:
        value = numpy_helper.to_array(init)
        want = params[init.name].astype(dtype, copy=False)
        if value.dtype != want.dtype or value.shape != want.shape:
            raise ExportError(f"initializer {init.name}: {value.dtype}{list(value.shape)}, expected {want.dtype}{list(want.shape)}")
        if not _same_bits(value, want):
            raise ExportError(f"initializer {init.name}: values differ from the state_dict")
        del value
    for node in model_proto.graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and int(np.prod(attr.t.dims)) > MAX_CONSTANT_ELEMENTS:
                raise ExportError(
                    f"node {node.name} ({node.op_type}) holds a constant of shape {list(attr.t.dims)}: "
                    "a folded copy of a weight?"
                )


def _to_float16_storage(model_proto) -> None:
    """float32 initializers -> float16 initializers (same names), each read through a Cast to float32."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    renamed = {}
    for init in model_proto.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
        init.CopyFrom(half)
        out = f"{init.name}::float32"
        renamed[init.name] = out
        casts.append(helper.make_node("Cast", [init.name], [out], name=f"Cast::{init.name}", to=TensorProto.FLOAT))
    for node in model_proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    nodes = casts + list(model_proto.graph.node)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(nodes)


def _set_metadata(model_proto, config, tok_bytes: bytes, dtype: str) -> None:
    from pali_engine._version import __version__

    del model_proto.metadata_props[:]
    for key, value in (
        ("pali.format", FORMAT_VERSION),
        ("pali.config", config.to_json()),
        ("pali.tokenizer", base64.b64encode(tok_bytes).decode("ascii")),
        ("pali.weights_dtype", dtype),
    ):
        model_proto.metadata_props.add(key=key, value=value)
    model_proto.producer_name = "pali-engine"
    model_proto.producer_version = __version__
    model_proto.doc_string = "PaLI teacher-forced forward; see docs/onnx_format.md in pali-engine"


def _save(model_proto, path: str, external: bool) -> None:
    """Writes the model; with ``external``, tensors of >= 1 KiB go to NAME.onnx.data, page-aligned."""
    import onnx
    from onnx import TensorProto

    data_path = path + ".data"
    for p in (path, data_path):
        if os.path.exists(p):
            os.remove(p)
    if external:
        location = os.path.basename(data_path)
        with open(data_path, "wb") as f:
            for init in model_proto.graph.initializer:
                if not init.HasField("raw_data") or len(init.raw_data) < EXTERNAL_SIZE_THRESHOLD:
                    continue
                offset = f.tell()
                pad = -offset % EXTERNAL_ALIGNMENT
                if pad:
                    f.write(b"\0" * pad)
                    offset += pad
                f.write(init.raw_data)
                length = len(init.raw_data)
                init.ClearField("raw_data")
                init.data_location = TensorProto.EXTERNAL
                del init.external_data[:]
                for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                    init.external_data.add(key=key, value=value)
    onnx.save_model(model_proto, path)


def _check_file(path: str, params: Dict[str, np.ndarray], dtype: np.dtype, config) -> None:
    """Reads the written file back with the engine's own reader: metadata, names, shapes, bit-exact values."""
    from pali_engine import model_spec
    from pali_engine.model_file import load_tensor

    cfg, tok = model_spec.check_model_file(path)
    if cfg != config.to_dict():
        raise ExportError(f"{path}: pali.config read back differs from the model's config")
    for name, value in params.items():
        got = load_tensor(path, name)
        if not _same_bits(got, value.astype(dtype, copy=False)):
            raise ExportError(f"{path}: tensor {name} read back differs from the state_dict")


# --------------------------------------------------------------------------
# validation against PyTorch

def validation_cases(config):
    """(batch, prompt lengths, decoder length, seed) of the self-check."""
    L = config.max_prompt_tokens
    return [
        (1, [min(5, L)], 4, 1),
        (3, [L, max(1, L // 2), 1], 6, 2),
    ]


def check_session(path: str, threads: Optional[int] = None):
    """An onnxruntime CPU session for an exporter's self-check: quiet, threads not spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def compare_logits(path: str, model, threads: Optional[int] = None) -> float:
    """Max abs error of onnxruntime (running ``path``) vs ``model`` on the validation cases."""
    import torch

    session = check_session(path, threads)
    worst = 0.0
    for batch, lens, dec_len, seed in validation_cases(model.config):
        px, ids, mask, dec = _dummy_inputs(model.config, batch, lens, dec_len, seed)
        with torch.no_grad():
            ref = model(px, ids, mask, dec).float().numpy()
        (out,) = session.run(
            ["logits"],
            {"pixel_values": px.numpy(), "input_ids": ids.numpy(), "attention_mask": mask.numpy(),
             "decoder_input_ids": dec.numpy()},
        )
        if out.shape != ref.shape or out.dtype != np.float32:
            raise ExportError(f"onnxruntime logits {out.dtype}{list(out.shape)}, expected float32{list(ref.shape)}")
        worst = max(worst, float(np.abs(out - ref).max()))
    del session
    return worst


def _rounded_model(model):
    """A copy of ``model`` with its weights rounded to float16 (computing in float32)."""
    import copy

    import torch

    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(p.half().float())
    return twin.eval()


# --------------------------------------------------------------------------
# the exporter

def export_model(model, tok_bytes: bytes, path: str, *, dtype: str = "float32",
                 external_data: Optional[bool] = None, validate: bool = True, opset: int = OPSET,
                 log: Callable[[str], None] = lambda s: None) -> dict:
    """Exports ``model`` (export.model.Pali) with its tokenizer to ``path`` and checks the file.

    Args:
      dtype: storage of the weights, "float32" or "float16" (the graph computes in float32).
      external_data: True: weights to ``path + ".data"``; None: only when they exceed ~2 GB.
      validate: run onnxruntime against PyTorch (tolerance LOGITS_TOLERANCE).
    Returns a report: {"path", "bytes", "data_bytes", "export_s", "max_abs_error", ...}.
    Raises ValueError for bad arguments, ExportError when a check fails.
    """
    import onnx

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    np_dtype = np.dtype(dtype)
    config = model.config.validate()
    model.eval()
    _check_tokenizer(tok_bytes, config)
    params = _parameters(model)
    weight_bytes = sum(v.size for v in params.values()) * np_dtype.itemsize
    external = weight_bytes > EXTERNAL_DATA_BYTES if external_data is None else bool(external_data)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    report = {"path": path, "dtype": dtype, "parameters": int(sum(v.size for v in params.values())),
              "external_data": external}

    t0 = time.perf_counter()
    # Everything is written and checked in a staging folder beside the output and moved into
    # place only when every check passed: a failed export leaves no file (and keeps an old one).
    stage = tempfile.mkdtemp(prefix=".pali-export-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        raw = os.path.join(stage, "torch", "model.onnx")
        os.makedirs(os.path.dirname(raw))
        _torch_export(model, raw, opset)
        report["torch_export_s"] = round(time.perf_counter() - t0, 3)
        proto = onnx.load(raw)  # with its external data, if torch wrote any
        shutil.rmtree(os.path.dirname(raw))
        _check_initializers(proto, params, np.dtype(np.float32))
        if dtype == "float16":
            _to_float16_storage(proto)
            _check_initializers(proto, params, np_dtype)
        _set_metadata(proto, config, tok_bytes, dtype)
        staged = os.path.join(stage, os.path.basename(path))
        _save(proto, staged, external)
        del proto
        report["export_s"] = round(time.perf_counter() - t0, 3)
        log(f"wrote {path} in {report['export_s']:.1f} s")

        t1 = time.perf_counter()
        onnx.checker.check_model(staged)
        _check_file(staged, params, np_dtype, config)
        report["bytes"] = os.path.getsize(staged)
        report["data_bytes"] = os.path.getsize(staged + ".data") if external else 0
        report["check_s"] = round(time.perf_counter() - t1, 3)
        log(f"checked names, shapes and values of {len(params)} parameters ({report['check_s']:.1f} s)")
        if validate:
            t2 = time.perf_counter()
            reference = _rounded_model(model) if dtype == "float16" else model
            err = compare_logits(staged, reference)
            report["max_abs_error"] = err
            report["tolerance"] = LOGITS_TOLERANCE
            if dtype == "float16":
                del reference
                # informative: the effect of rounding the weights, not a check
                report["max_abs_error_vs_float32_weights"] = compare_logits(staged, model)
            report["validate_s"] = round(time.perf_counter() - t2, 3)
            log(f"onnxruntime vs PyTorch logits: max abs error {err:.3g} (tolerance {LOGITS_TOLERANCE:g})"
                + (f"; vs the float32 weights {report['max_abs_error_vs_float32_weights']:.3g}"
                   if dtype == "float16" else ""))
            if not err <= LOGITS_TOLERANCE:
                raise ExportError(f"{path}: onnxruntime logits differ from PyTorch by {err:.3g} > {LOGITS_TOLERANCE:g}")
        if external:
            os.replace(staged + ".data", path + ".data")
        elif os.path.exists(path + ".data"):
            os.remove(path + ".data")  # a stale data file of an earlier export
        os.replace(staged, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


# --------------------------------------------------------------------------
# command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by pali-engine train (.pt)")
    parser.add_argument("-o", "--output", required=True, help="the ONNX file to write (NAME.onnx)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="storage of the weights; the graph computes in float32 either way")
    parser.add_argument("--external-data", action="store_true",
                        help="write the weights to NAME.onnx.data (automatic above ~2 GB)")
    parser.add_argument("--tokenizer", help="SentencePiece model (default: tokenizer.model beside the checkpoint)")
    parser.add_argument("--no-validate", action="store_true", help="skip the onnxruntime vs PyTorch check")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    model, tok_bytes = load_checkpoint(args.checkpoint, args.tokenizer)
    report = export_model(model, tok_bytes, args.output, dtype=args.dtype,
                          external_data=True if args.external_data else None,
                          validate=not args.no_validate, opset=args.opset, log=log)
    size = report["bytes"] + report["data_bytes"]
    print(f"{report['path']}: {report['parameters']:,} parameters, {report['dtype']}, "
          f"{size / 2**20:.1f} MiB" + (" (external data)" if report["external_data"] else "")
          + (f", max abs error {report['max_abs_error']:.2g}" if "max_abs_error" in report else ""))
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="pali-engine export", description="export a checkpoint to ONNX")
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
