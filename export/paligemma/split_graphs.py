"""PaliGemma as three graphs for onnxruntime: vision encoder, token embeddings, decoder with past key/values.

Why: the file ``pali-engine convert`` writes holds the teacher-forced graph
(every call recomputes the whole sequence), which is what the engine reads
but no way to generate with onnxruntime.  Generating with onnxruntime takes
the layout transformers.js and optimum give PaliGemma: the image encoded
once, the prompt's embeddings with the image features put in place of its
``<image>`` tokens, then a decoder fed one token a step with the keys and
values of the earlier positions.  The benchmarks run onnxruntime on these
graphs as a peer (benchmarks/paligemma_split_peer.py); they are built from
the config as ``graph.build_graph`` builds the teacher-forced one, from the
same blocks, and their weights are streamed from the checkpoint one tensor
at a time (at most one float32 tensor in memory), so a 3B checkpoint
converts on a small machine.

* ``vision.onnx``: pixel_values f32[b, 3, S, S] -> image_features f32[b, N, D]
  (SigLIP and the projector; unscaled, as the teacher-forced graph puts them in).
* ``embed.onnx``: input_ids i64[b, n] -> inputs_embeds f32[b, n, D] (the token
  table's rows × sqrt(D)).
* ``decoder.onnx``: inputs_embeds f32[b, n, D], attention_mask i64[b, p + n]
  (0 at padding), position_ids i64[b, n] (1-based, as the teacher-forced graph
  counts), ``past_key_values.{i}.key`` / ``.value`` f32[b, kv_heads, p, head_dim]
  per layer -> logits f32[b, V] of the last position only (what a generator
  reads; the other positions' logits would cost V x D each) and
  ``present.{i}.key`` / ``.value`` f32[b, kv_heads, p + n, head_dim].

Attention follows the teacher-forced graph's prefix-LM rule for the way a
generator calls: the call with an empty cache is the prompt, whose tokens see
each other both ways; generated tokens come one per call and see every
earlier position.  On Gemma 2's sliding-window layers a generated token sees
only the last ``sliding_window`` positions; the prompt's tokens see all of the
prompt, as the prefix does in the teacher-forced graph.

Weights are float32, and each linear layer's is stored transposed, [in, out],
named ``<prefix>.weight_t``, so that every MatMul reads an initializer
directly: what torch.onnx writes for a Linear and what onnxruntime's
``quantize_dynamic`` needs to find the weights it quantizes.

``write_int8_decoder`` writes the decoder as ``quantize_dynamic`` makes it
(int8 weights, one symmetric scale per tensor, activations quantized at run
time: DynamicQuantizeLinear, MatMulInteger, Cast, two Mul), its weights
quantized by onnxruntime's own ``quantize_data`` as they stream:
``quantize_dynamic`` itself loads the whole float32 model into memory more
than once, which for a 3B decoder (10 GB) is more than a 24 GB machine has.
Tests check that the two give the same weights and logits.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from . import checkpoint as ckpt
from .convert import CHUNK_BYTES, stored_chunk
from .graph import (GRAPH_NAME, IR_VERSION, TRANSPOSED_SUFFIX, _Builder, _gemma_layer, _image_features,
                    _inverse_frequencies)
from .writer import StreamedTensor, write_model

FILES = ("vision.onnx", "embed.onnx", "decoder.onnx")
CONFIG_FILE = "config.json"
OPSET = 17
EMBED = "model.language_model.embed_tokens.weight"
#: The output layer as the decoder reads it, [D, V]: lm_head.weight transposed, or the token table when tied.
HEAD = "lm_head.weight" + TRANSPOSED_SUFFIX
#: Rows of a transposed tensor written per chunk.
TRANSPOSED_ROWS_PER_CHUNK = 256


class _DynamicInt8Builder(_Builder):
    """The linear layers as onnxruntime's quantize_dynamic rewrites a MatMul whose B is an initializer."""

    def __init__(self):
        super().__init__("float32", OPSET, transposed_weights=True)
        self._quantized_input: Dict[str, Tuple[str, str, str]] = {}

    def matmul_weight(self, x: str, name: str) -> str:
        if x not in self._quantized_input:  # one DynamicQuantizeLinear per activation, shared by its MatMuls
            outputs = [f"{x}_quantized", f"{x}_scale", f"{x}_zero_point"]
            self.nodes.append(self._helper.make_node("DynamicQuantizeLinear", [x], outputs,
                                                     name=f"{x}_QuantizeLinear"))
            self._quantized_input[x] = tuple(outputs)
        quantized, scale, zero_point = self._quantized_input[x]
        for suffix in QUANTIZED_SUFFIXES:
            self.weights.append(name + suffix)
        product = self.op("MatMulInteger", quantized, name + "_quantized", zero_point, name + "_zero_point")
        scales = self.op("Mul", scale, name + "_scale")
        return self.op("Mul", self.op("Cast", product, to=1), scales)


#: The initializers quantize_dynamic makes of a weight W: W_quantized (int8), W_scale, W_zero_point.
QUANTIZED_SUFFIXES = ("_quantized", "_scale", "_zero_point")


def past_names(layers: int) -> List[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def present_names(layers: int) -> List[str]:
    return [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def _model(g: _Builder, inputs, outputs):
    from onnx import helper

    graph = helper.make_graph(g.casts + g.nodes, GRAPH_NAME, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def vision_graph(config: Dict[str, Any]):
    """(ModelProto without initializers, the weights it reads)."""
    from onnx import TensorProto, helper

    g = _Builder("float32", OPSET, transposed_weights=True)
    g.nodes.append(helper.make_node("Identity", [_image_features(g, config)], ["image_features"],
                                    name="/image_features"))
    v = config["vision_config"]
    S = v["image_size"]
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", v["num_channels"], S, S])]
    outputs = [helper.make_tensor_value_info("image_features", TensorProto.FLOAT,
                                             ["batch", config["num_image_tokens"],
                                              config["text_config"]["hidden_size"]])]
    return _model(g, inputs, outputs), list(g.weights)


def embed_graph(config: Dict[str, Any]):
    from onnx import TensorProto, helper

    t = config["text_config"]
    g = _Builder("float32", OPSET)
    ids = "input_ids"
    if config["image_token_index"] >= t["vocab_size"]:  # not a row of the table: its row is replaced anyway
        is_image = g.op("Equal", ids, g.const(config["image_token_index"], np.int64))
        ids = g.op("Where", is_image, g.const(0, np.int64), ids)
    scaled = g.op("Mul", g.op("Gather", g.weight(EMBED), ids, axis=0),
                  g.const(float(np.float32(t["hidden_size"] ** 0.5))))
    g.nodes.append(helper.make_node("Identity", [scaled], ["inputs_embeds"], name="/inputs_embeds"))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                             ["batch", "sequence", t["hidden_size"]])]
    return _model(g, inputs, outputs), list(g.weights)


def _in_window_or_prompt(g: _Builder, window: int) -> str:
    """bool [n, p + n]: key k is within the window of query p + i (k > p + i - window), or the cache is
    empty (the prompt's call, whose tokens see all of the prompt)."""
    def dim(name, axis):
        return g.op("Gather", g.op("Shape", name), g.const(axis, np.int64), axis=0)

    past = dim("past_key_values.0.key", 2)
    keys = g.op("Range", g.const(0, np.int64), dim("attention_mask", 1), g.const(1, np.int64))
    queries = g.op("Add", g.op("Range", g.const(0, np.int64), dim("inputs_embeds", 1), g.const(1, np.int64)), past)
    in_window = g.op("Greater", g.op("Unsqueeze", keys, g.ints([0])),
                     g.op("Sub", g.op("Unsqueeze", queries, g.ints([1])), g.const(window, np.int64)))
    return g.op("Or", in_window, g.op("Equal", past, g.const(0, np.int64)))


def decoder_graph(config: Dict[str, Any], int8: bool = False):
    """The decoder; ``int8``: its MatMuls as quantize_dynamic rewrites them (weights W_quantized, W_scale,
    W_zero_point for each W)."""
    from onnx import TensorProto, helper

    t = config["text_config"]
    layers, kv_heads, hd = t["num_hidden_layers"], t["num_key_value_heads"], t["head_dim"]
    g = _DynamicInt8Builder() if int8 else _Builder("float32", OPSET, transposed_weights=True)
    # RoPE at the given positions: angles [b, n, head_dim] -> [b, 1, n, head_dim].
    freqs = g.op("Mul", g.op("Unsqueeze", g.op("Cast", "position_ids", to=1), g.ints([2])),
                 _inverse_frequencies(g, t))
    angles = g.op("Concat", freqs, freqs, axis=-1)
    cos, sin = (g.op("Unsqueeze", g.op(op, angles), g.ints([1])) for op in ("Cos", "Sin"))
    allowed = g.op("Unsqueeze", g.op("Not", g.op("Equal", "attention_mask", g.const(0, np.int64))), g.ints([1, 2]))
    sliding = allowed
    if t.get("sliding_window") is not None:
        sliding = g.op("And", allowed, _in_window_or_prompt(g, t["sliding_window"]))
    x, presents = "inputs_embeds", []
    for i in range(layers):
        x, present = _gemma_layer(g, x, t, i, cos, sin, allowed, sliding,
                                  past=(f"past_key_values.{i}.key", f"past_key_values.{i}.value"))
        presents += present
    last = g.op("Slice", x, g.ints([-1]), g.ints([np.iinfo(np.int64).max]), g.ints([1]))
    last = g.rms_norm(g.op("Squeeze", last, g.ints([1])), "model.language_model.norm", t["rms_norm_eps"])
    logits = g.matmul_weight(last, HEAD)
    if t.get("final_logit_softcapping") is not None:
        logits = g.softcap(logits, t["final_logit_softcapping"])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/logits"))
    for value, name in zip(presents, present_names(layers)):
        g.nodes.append(helper.make_node("Identity", [value], [name], name="/" + name))
    cache = ["batch", kv_heads, "past_sequence", hd]
    inputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence",
                                                                                 t["hidden_size"]]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
              *(helper.make_tensor_value_info(name, TensorProto.FLOAT, cache) for name in past_names(layers))]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", t["vocab_size"]]),
               *(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                               ["batch", kv_heads, "total_sequence", hd])
                 for name in present_names(layers))]
    return _model(g, inputs, outputs), list(g.weights)


def _source_name(name: str, config: Dict[str, Any]) -> Tuple[str, bool]:
    """The checkpoint tensor a graph weight is made of, and whether it is stored transposed."""
    for suffix in QUANTIZED_SUFFIXES:
        if name.endswith(TRANSPOSED_SUFFIX + suffix):
            name = name[:-len(suffix)]
    if name == HEAD:
        return (EMBED if config["tie_word_embeddings"] else "lm_head.weight"), True
    if name.endswith(".weight" + TRANSPOSED_SUFFIX):
        return name[:-len(TRANSPOSED_SUFFIX)], True
    return name, False


def _float32(entry: ckpt.WeightEntry) -> np.ndarray:
    values = np.concatenate([stored_chunk(chunk, entry.dtype, "float32")
                             for chunk in ckpt.read_chunks(entry, CHUNK_BYTES)])
    return values.reshape(entry.shape)


def _streamed(name: str, entry: ckpt.WeightEntry, transposed: bool) -> StreamedTensor:
    """The weight in float32; transposed, the whole source in memory once and its rows written in chunks."""
    from onnx import TensorProto

    shape = list(entry.shape[::-1]) if transposed else list(entry.shape)

    def chunks():
        if not transposed:
            for chunk in ckpt.read_chunks(entry, CHUNK_BYTES):
                yield memoryview(stored_chunk(chunk, entry.dtype, "float32")).cast("B")
            return
        values = _float32(entry).T
        for start in range(0, values.shape[0], TRANSPOSED_ROWS_PER_CHUNK):
            yield memoryview(np.ascontiguousarray(values[start:start + TRANSPOSED_ROWS_PER_CHUNK])).cast("B")

    return StreamedTensor(name, shape, TensorProto.FLOAT, int(np.prod(shape, dtype=np.int64)) * 4, chunks)


def _int8_tensors(name: str, entry: ckpt.WeightEntry) -> List[StreamedTensor]:
    """W_quantized, W_scale and W_zero_point of the transposed weight ``name``, by onnxruntime's quantize_data
    rule for quantize_dynamic's weights (int8, symmetric, per tensor, no reduced range)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_data_quant_params, quantize_nparray

    values = _float32(entry).T
    zero_point, scale = compute_data_quant_params(values.reshape(-1), TensorProto.INT8, True, reduce_range=False)
    shape = list(values.shape)

    def codes():
        for start in range(0, shape[0], TRANSPOSED_ROWS_PER_CHUNK):
            rows = np.ascontiguousarray(values[start:start + TRANSPOSED_ROWS_PER_CHUNK])
            yield memoryview(quantize_nparray(TensorProto.INT8, rows, scale, zero_point)).cast("B")

    def scalar(value, data_type):
        return StreamedTensor(name + ("_scale" if data_type == TensorProto.FLOAT else "_zero_point"), [],
                              data_type, value.nbytes, lambda: [memoryview(np.ascontiguousarray(value)).cast("B")])

    return [StreamedTensor(name + "_quantized", shape, TensorProto.INT8, values.size, codes),
            scalar(np.asarray(scale, np.float32), TensorProto.FLOAT),
            scalar(np.asarray(zero_point, np.int8), TensorProto.INT8)]


def _located_weights(hf_dir: str | os.PathLike) -> Tuple[Dict[str, Any], Dict[str, ckpt.WeightEntry]]:
    """The checkpoint's config and its weights, located (not read), by the graphs' names."""
    from pali_engine.paligemma_spec import expected_parameter_shapes

    checkpoint = ckpt.read_checkpoint(hf_dir)
    return checkpoint.config, ckpt.select_weights(checkpoint, expected_parameter_shapes(checkpoint.config))


def write_int8_decoder(hf_dir: str | os.PathLike, path: str | os.PathLike) -> int:
    """Writes ``decoder.onnx`` as quantize_dynamic makes it of the float32 one, weights streamed; its bytes."""
    config, entries = _located_weights(hf_dir)
    model, names = decoder_graph(config, int8=True)
    tensors = []
    for name in names:
        source, transposed = _source_name(name, config)
        if name.endswith("_quantized"):
            tensors += _int8_tensors(name[:-len("_quantized")], entries[source])
        elif not name.endswith(("_scale", "_zero_point")):
            tensors.append(_streamed(name, entries[source], transposed))
    write_model(model, tensors, os.fspath(path), external=True)
    return sum(t.nbytes for t in tensors)


def write_split_graphs(hf_dir: str | os.PathLike, folder: str | os.PathLike,
                       log: Callable[[str], None] = lambda s: None) -> Dict[str, int]:
    """Writes FILES (each with its ``.data``) and CONFIG_FILE into ``folder``; {file: bytes of weights}."""
    config, entries = _located_weights(hf_dir)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    sizes = {}
    for file, build in zip(FILES, (vision_graph, embed_graph, decoder_graph)):
        model, names = build(config)
        tensors = []
        for name in names:
            source, transposed = _source_name(name, config)
            tensors.append(_streamed(name, entries[source], transposed))
        write_model(model, tensors, os.path.join(folder, file), external=True)
        sizes[file] = sum(t.nbytes for t in tensors)
        log(f"wrote {file}: {len(tensors)} weights, {sizes[file] / 2**30:.2f} GiB")
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(config, f)
    return sizes


def read_split_config(folder: str | os.PathLike) -> Dict[str, Any]:
    with open(os.path.join(os.fspath(folder), CONFIG_FILE)) as f:
        return json.load(f)
