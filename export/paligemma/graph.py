"""The teacher-forced PaliGemma graph, built node by node from the config alone.

Why: a checkpoint of 10B or 28B parameters does not fit in memory, so the
graph cannot be traced from a PyTorch module holding the weights.  The graph
depends only on the config; the weights are referenced by name and written to
the file one at a time by the converter.  The computation is that of
``model.PaliGemma`` (and transformers 5), op for op as the TorchScript exporter
wrote it from that module (tests check the logits against both):

* SigLIP: patch Conv with bias, learned position embedding, pre-LN blocks,
  post-LN; the linear projector.
* Text embeddings × sqrt(hidden) (its float32 value); the k-th ``<image>``
  token of a row takes the row's k-th image feature, unscaled.
* Gemma / Gemma 2 decoder: (1 + w) RMSNorm, RoPE at positions 1..L,
  multi-query / grouped-query attention, GeGLU, the prefix-LM mask from
  ``token_type_ids`` and ``attention_mask``, sliding windows, soft-caps, tied
  or untied head.

Weights are initializers named as in ``paligemma_spec.expected_parameter_shapes``;
with float16 or bfloat16 storage each is read through a ``Cast`` to float32,
so the graph computes in float32.  Quantized (``convert --dtype int8|int4``),
the weights of the linear layers (and an untied output layer) are int8 or
int4 codes beside ``<name>_scale`` (export/paligemma/quantize.py), each read
through ``DequantizeLinear``: per output row for int8, in blocks along K for
int4 (opset 21), its float16 scales first cast to float32 so that the weight
is ``code * scale`` exactly.  Constants are scalars or short shape
vectors (at most ``MAX_CONSTANT_ELEMENTS`` elements).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("logits",)
#: ONNX data types of the storage dtypes.
STORAGE_TYPES = {"float32": 1, "float16": 10, "bfloat16": 16}
IR_VERSION = 8
#: int4 DequantizeLinear (blocked) needs opset 21, which needs IR 10.
INT4_OPSET, INT4_IR_VERSION = 21, 10
GRAPH_NAME = "main_graph"
SCALE_SUFFIX = "_scale"  # pali_engine.model_spec.QUANTIZED_SCALE_SUFFIX
#: A linear layer's weight stored as [in, out] (the split graphs') is named ``<prefix>.weight_t``.
TRANSPOSED_SUFFIX = "_t"


class _Builder:
    """Appends nodes; names each output after its op, reuses constants and weight casts."""

    def __init__(self, storage: str, opset: int, quantization: Optional[Tuple[str, Optional[int]]] = None,
                 transposed_weights: bool = False):
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.storage = storage
        self.opset = opset
        #: The linear layers read ``<prefix>.weight_t`` [in, out] (no Transpose node): see split_graphs.
        self.transposed_weights = transposed_weights
        #: ("int8", None) or ("int4", group): how the linear layers' weights are stored; None: like the rest.
        self.quantization = quantization
        #: The weights stored quantized, in the order the graph reads them.
        self.quantized: List[str] = []
        self.casts: List[Any] = []
        self.nodes: List[Any] = []
        self.weights: List[str] = []
        self._cast_of: Dict[str, str] = {}
        self._constants: Dict[tuple, str] = {}
        self._counts: Dict[str, int] = {}

    def _name(self, op_type: str) -> str:
        n = self._counts.get(op_type, 0)
        self._counts[op_type] = n + 1
        return f"/{op_type}_{n}"

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        name = self._name(op_type)
        self.nodes.append(self._helper.make_node(op_type, list(inputs), [name + "_output_0"], name=name,
                                                 **attributes))
        return name + "_output_0"

    def const(self, value, dtype=np.float32) -> str:
        """A Constant node: a scalar (Python number) or a short vector (list)."""
        array = np.array(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self._name("Constant")
            self.nodes.append(self._helper.make_node(
                "Constant", [], [name + "_output_0"], name=name,
                value=self._numpy_helper.from_array(array, name=name + "_value")))
            self._constants[key] = name + "_output_0"
        return self._constants[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(list(values), np.int64)

    def weight(self, name: str) -> str:
        """The float32 value of the initializer ``name``."""
        if name not in self.weights:
            self.weights.append(name)
        if self.storage == "float32":
            return name
        if name not in self._cast_of:
            out = f"{name}::float32"
            self.casts.append(self._helper.make_node("Cast", [name], [out], name=f"Cast::{name}", to=1))
            self._cast_of[name] = out
        return self._cast_of[name]

    def linear_weight(self, name: str) -> str:
        """The float32 value of a linear layer's weight [out, in]: dequantized when the layers are quantized."""
        if self.quantization is None:
            return self.weight(name)
        if name not in self.weights:
            self.weights.append(name)
            self.quantized.append(name)
        if name not in self._cast_of:
            kind, group = self.quantization
            out, scale = f"{name}::float32", name + SCALE_SUFFIX
            if kind == "int8":
                self.casts.append(self._helper.make_node("DequantizeLinear", [name, scale], [out],
                                                         name=f"DequantizeLinear::{name}", axis=0))
            else:
                self.casts.append(self._helper.make_node("Cast", [scale], [f"{scale}::float32"],
                                                         name=f"Cast::{scale}", to=1))
                self.casts.append(self._helper.make_node("DequantizeLinear", [name, f"{scale}::float32"], [out],
                                                         name=f"DequantizeLinear::{name}", axis=1,
                                                         block_size=group))
            self._cast_of[name] = out
        return self._cast_of[name]

    # ---------------------------------------------------------------- layers

    def linear(self, x: str, prefix: str, bias: bool = True) -> str:
        """x @ W.T (+ b), W in PyTorch's [out, in] layout (or stored as W.T: ``transposed_weights``)."""
        if self.transposed_weights:
            y = self.matmul_weight(x, prefix + ".weight" + TRANSPOSED_SUFFIX)
        else:
            y = self.op("MatMul", x, self.op("Transpose", self.linear_weight(prefix + ".weight"), perm=[1, 0]))
        return self.op("Add", self.weight(prefix + ".bias"), y) if bias else y

    def matmul_weight(self, x: str, name: str) -> str:
        """x @ the initializer ``name``, stored as the MatMul's B."""
        return self.op("MatMul", x, self.weight(name))

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op("LayerNormalization", x, self.weight(prefix + ".weight"), self.weight(prefix + ".bias"),
                       axis=-1, epsilon=eps)

    def rms_norm(self, x: str, prefix: str, eps: float) -> str:
        """x / sqrt(mean(x²) + eps) × (1 + w), in float32 (Gemma)."""
        square = self.op("Pow", x, self.const(2.0))
        # ReduceMean takes its axes as an input from opset 18 on.
        mean = (self.op("ReduceMean", square, self.ints([-1]), keepdims=1) if self.opset >= 18
                else self.op("ReduceMean", square, axes=[-1], keepdims=1))
        inverse = self.op("Div", self.const(1.0), self.op("Sqrt", self.op("Add", mean, self.const(eps))))
        scale = self.op("Add", self.weight(prefix + ".weight"), self.const(1.0))
        return self.op("Mul", self.op("Mul", x, inverse), scale)

    def gelu(self, x: str, name: str) -> str:
        if name == "gelu":  # exact, with erf
            erf = self.op("Erf", self.op("Div", x, self.const(math.sqrt(2.0))))
            return self.op("Mul", self.op("Mul", x, self.op("Add", erf, self.const(1.0))), self.const(0.5))
        cube = self.op("Mul", x, self.op("Mul", x, x))
        inner = self.op("Add", x, self.op("Mul", self.const(0.044715), cube))
        tanh = self.op("Tanh", self.op("Mul", self.const(math.sqrt(2.0 / math.pi)), inner))
        return self.op("Mul", self.const(0.5), self.op("Mul", x, self.op("Add", self.const(1.0), tanh)))

    def heads(self, x: str, count: int, head_dim: int) -> str:
        """[b, n, count·head_dim] -> [b, count, n, head_dim]."""
        return self.op("Transpose", self.op("Reshape", x, self.ints([0, 0, count, head_dim])), perm=[0, 2, 1, 3])

    def merge_heads(self, x: str, width: int) -> str:
        return self.op("Reshape", self.op("Transpose", x, perm=[0, 2, 1, 3]), self.ints([0, 0, width]))

    def softcap(self, x: str, cap: float) -> str:
        return self.op("Mul", self.op("Tanh", self.op("Div", x, self.const(cap))), self.const(cap))


def _siglip_layer(g: _Builder, x: str, v: Dict[str, Any], prefix: str) -> str:
    heads, width = v["num_attention_heads"], v["hidden_size"]
    head_dim = width // heads
    h = g.layer_norm(x, prefix + ".layer_norm1", v["layer_norm_eps"])
    q = g.heads(g.linear(h, prefix + ".self_attn.q_proj"), heads, head_dim)
    k = g.op("Reshape", g.linear(h, prefix + ".self_attn.k_proj"), g.ints([0, 0, heads, head_dim]))
    value = g.heads(g.linear(h, prefix + ".self_attn.v_proj"), heads, head_dim)
    scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 3, 1]))
    probs = g.op("Softmax", g.op("Mul", scores, g.const(head_dim ** -0.5)), axis=-1)
    h = g.merge_heads(g.op("MatMul", probs, value), width)
    x = g.op("Add", x, g.linear(h, prefix + ".self_attn.out_proj"))
    h = g.layer_norm(x, prefix + ".layer_norm2", v["layer_norm_eps"])
    h = g.linear(g.gelu(g.linear(h, prefix + ".mlp.fc1"), v["hidden_act"]), prefix + ".mlp.fc2")
    return g.op("Add", x, h)


def _image_features(g: _Builder, config: Dict[str, Any]) -> str:
    """pixel_values -> [b, N, projection_dim]."""
    v = config["vision_config"]
    P, W = v["patch_size"], v["hidden_size"]
    tower = "model.vision_tower"
    x = g.op("Conv", "pixel_values", g.weight(tower + ".embeddings.patch_embedding.weight"),
             g.weight(tower + ".embeddings.patch_embedding.bias"),
             dilations=[1, 1], group=1, kernel_shape=[P, P], pads=[0, 0, 0, 0], strides=[P, P])
    x = g.op("Transpose", g.op("Reshape", x, g.ints([0, W, -1])), perm=[0, 2, 1])
    x = g.op("Add", x, g.op("Unsqueeze", g.weight(tower + ".embeddings.position_embedding.weight"), g.ints([0])))
    for i in range(v["num_hidden_layers"]):
        x = _siglip_layer(g, x, v, f"{tower}.encoder.layers.{i}")
    x = g.layer_norm(x, tower + ".post_layernorm", v["layer_norm_eps"])
    return g.linear(x, "model.multi_modal_projector.linear")


def _rotate_half(g: _Builder, x: str, head_dim: int) -> str:
    half = head_dim // 2
    first = g.op("Slice", x, g.ints([0]), g.ints([half]), g.ints([-1]))
    second = g.op("Slice", x, g.ints([half]), g.ints([head_dim]), g.ints([-1]))
    return g.op("Concat", g.op("Neg", second), first, axis=-1)


def _inverse_frequencies(g: _Builder, t: Dict[str, Any]) -> str:
    """RoPE's [head_dim / 2] inverse frequencies, computed in the graph as transformers computes them."""
    hd = t["head_dim"]
    steps = g.op("Range", g.const(0.0), g.const(float(hd // 2)), g.const(1.0))
    exponent = g.op("Div", g.op("Mul", steps, g.const(2.0)), g.const(float(hd)))
    return g.op("Reciprocal", g.op("Pow", g.const(t["rope_theta"]), exponent))


def _rope(g: _Builder, t: Dict[str, Any], length: str):
    """(cos, sin) [1, 1, L, head_dim] at positions 1..L; the frequencies computed in the graph."""
    inv_freq = _inverse_frequencies(g, t)
    positions = g.op("Add", g.op("Range", g.const(0.0), g.op("Cast", length, to=1), g.const(1.0)), g.const(1.0))
    freqs = g.op("Mul", g.op("Unsqueeze", positions, g.ints([1])), g.op("Unsqueeze", inv_freq, g.ints([0])))
    angles = g.op("Concat", freqs, freqs, axis=-1)
    return (g.op("Unsqueeze", g.op("Cos", angles), g.ints([0, 1])),
            g.op("Unsqueeze", g.op("Sin", angles), g.ints([0, 1])))


def _masks(g: _Builder, t: Dict[str, Any], length: str):
    """(full, sliding) bool [b, 1, L, L]: a query (row) may attend a key (column)."""
    index = g.op("Range", g.const(0, np.int64), length, g.const(1, np.int64))
    query, key = g.op("Unsqueeze", index, g.ints([1])), g.op("Unsqueeze", index, g.ints([0]))
    prefix = g.op("Equal", "token_type_ids", g.const(0, np.int64))
    both_prefix = g.op("And", g.op("Unsqueeze", prefix, g.ints([2])), g.op("Unsqueeze", prefix, g.ints([1])))
    not_padding = g.op("Unsqueeze", g.op("Not", g.op("Equal", "attention_mask", g.const(0, np.int64))), g.ints([1]))
    causal = g.op("LessOrEqual", key, query)

    def allowed(keys):
        return g.op("Unsqueeze", g.op("And", g.op("Or", g.op("Unsqueeze", keys, g.ints([0])), both_prefix),
                                      not_padding), g.ints([1]))

    full = allowed(causal)
    window = t.get("sliding_window")
    if window is None:
        return full, full
    in_window = g.op("Greater", key, g.op("Sub", query, g.const(window, np.int64)))
    return full, allowed(g.op("And", causal, in_window))


def _gemma_layer(g: _Builder, x: str, t: Dict[str, Any], index: int, cos: str, sin: str, full: str,
                 sliding: str, past: Optional[Tuple[str, str]] = None) -> Tuple[str, Tuple[str, str]]:
    """One decoder layer; returns (x, (keys, values) [b, kv_heads, L, head_dim] after RoPE).

    ``past``: the keys and values of earlier positions, put before this call's (a decoder with a cache).
    """
    prefix = f"model.language_model.layers.{index}"
    heads, kv_heads, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    gemma2 = t["model_type"] == "gemma2"
    eps = t["rms_norm_eps"]
    attn = prefix + ".self_attn"

    h = g.rms_norm(x, prefix + ".input_layernorm", eps)
    q = g.heads(g.linear(h, attn + ".q_proj", bias=False), heads, hd)
    k = g.heads(g.linear(h, attn + ".k_proj", bias=False), kv_heads, hd)
    v = g.heads(g.linear(h, attn + ".v_proj", bias=False), kv_heads, hd)
    q = g.op("Add", g.op("Mul", q, cos), g.op("Mul", _rotate_half(g, q, hd), sin))
    k = g.op("Add", g.op("Mul", k, cos), g.op("Mul", _rotate_half(g, k, hd), sin))
    if past is not None:
        k, v = g.op("Concat", past[0], k, axis=2), g.op("Concat", past[1], v, axis=2)
    present = (k, v)
    groups = heads // kv_heads
    if groups > 1:  # each key/value head serves `groups` query heads
        def repeat(y):
            wide = g.op("Expand", g.op("Unsqueeze", y, g.ints([2])), g.ints([1, 1, groups, 1, 1]))
            return g.op("Reshape", wide, g.ints([0, heads, -1, hd]))

        k, v = repeat(k), repeat(v)
    scale = (t["query_pre_attn_scalar"] if gemma2 else hd) ** -0.5
    scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.const(scale))
    if gemma2 and t.get("attn_logit_softcapping") is not None:
        scores = g.softcap(scores, t["attn_logit_softcapping"])
    sliding_layer = gemma2 and t["layer_types"][index] == "sliding_attention"
    # Replacing (not adding) the finite minimum keeps a row with no allowed key finite (a padding query).
    scores = g.op("Where", sliding if sliding_layer else full, scores,
                  g.const(float(np.finfo(np.float32).min)))
    probs = g.op("Softmax", scores, axis=-1)
    h = g.linear(g.merge_heads(g.op("MatMul", probs, v), heads * hd), attn + ".o_proj", bias=False)
    act = t["hidden_activation"] if gemma2 else t["hidden_act"]

    def mlp(y):
        gate = g.gelu(g.linear(y, prefix + ".mlp.gate_proj", bias=False), act)
        up = g.linear(y, prefix + ".mlp.up_proj", bias=False)
        return g.linear(g.op("Mul", gate, up), prefix + ".mlp.down_proj", bias=False)

    if gemma2:
        x = g.op("Add", x, g.rms_norm(h, prefix + ".post_attention_layernorm", eps))
        h = mlp(g.rms_norm(x, prefix + ".pre_feedforward_layernorm", eps))
        return g.op("Add", x, g.rms_norm(h, prefix + ".post_feedforward_layernorm", eps)), present
    x = g.op("Add", x, h)
    return g.op("Add", x, mlp(g.rms_norm(x, prefix + ".post_attention_layernorm", eps))), present


def _logits(g: _Builder, config: Dict[str, Any]) -> str:
    t = config["text_config"]
    lm = "model.language_model"
    is_image = g.op("Equal", "input_ids", g.const(config["image_token_index"], np.int64))
    ids = "input_ids"
    if config["image_token_index"] >= t["vocab_size"]:  # not a row of the embedding
        ids = g.op("Where", is_image, g.const(0, np.int64), ids)
    embed = g.weight(lm + ".embed_tokens.weight")
    # transformers holds sqrt(hidden) as a float32 tensor: its float32 value.
    x = g.op("Mul", g.op("Gather", embed, ids, axis=0), g.const(float(np.float32(t["hidden_size"] ** 0.5))))
    features = _image_features(g, config)
    slot = g.op("Sub", g.op("CumSum", g.op("Cast", is_image, to=7), g.const(1, np.int32)), g.const(1, np.int64))
    slot = g.op("Clip", slot, g.const(0, np.int64), g.const(config["num_image_tokens"] - 1, np.int64))
    index = g.op("Expand", g.op("Unsqueeze", slot, g.ints([2])), g.ints([1, 1, t["hidden_size"]]))
    gathered = g.op("GatherElements", features, index, axis=1)
    x = g.op("Where", g.op("Unsqueeze", is_image, g.ints([2])), gathered, x)
    length = g.op("Gather", g.op("Shape", "input_ids"), g.const(1, np.int64), axis=0)
    cos, sin = _rope(g, t, length)
    full, sliding = _masks(g, t, length)
    for i in range(t["num_hidden_layers"]):
        x, _ = _gemma_layer(g, x, t, i, cos, sin, full, sliding)
    x = g.rms_norm(x, lm + ".norm", t["rms_norm_eps"])
    head = embed if config["tie_word_embeddings"] else g.linear_weight("lm_head.weight")
    logits = g.op("MatMul", x, g.op("Transpose", head, perm=[1, 0]))
    if t.get("final_logit_softcapping") is not None:
        logits = g.softcap(logits, t["final_logit_softcapping"])
    return logits


def build_graph(config: Dict[str, Any], storage: str, opset: int,
                quantization: Optional[Tuple[str, Optional[int]]] = None):
    """The ModelProto of ``config`` (a converted ``pali.config``) with no initializers yet.

    Returns (model, weight names in the order the graph first reads them, the
    names among them stored quantized).  The caller adds one initializer per
    weight (``storage``: "float32", "float16" or "bfloat16"), named as the
    graph reads them; with ``quantization`` (("int8", None) or ("int4",
    group)) the linear layers' weights are codes, each with its scales.
    """
    from onnx import TensorProto, helper

    ir_version = IR_VERSION
    if quantization is not None and quantization[0] == "int4":
        opset, ir_version = max(opset, INT4_OPSET), INT4_IR_VERSION
    g = _Builder(storage, opset, quantization)
    logits = _logits(g, config)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/logits"))
    v, t = config["vision_config"], config["text_config"]
    S = v["image_size"]
    inputs = [
        helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", v["num_channels"], S, S]),
        *(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
          for name in INPUT_NAMES[1:]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", t["vocab_size"]])]
    graph = helper.make_graph(g.casts + g.nodes, GRAPH_NAME, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    return model, list(g.weights), list(g.quantized)
