"""What a pali-engine model file must contain, derived from its config alone.

Why: every backend (onnxruntime, the native engine) finds weights by their
PyTorch ``state_dict`` names, so a file whose tensors do not match what its
``pali.config`` implies must fail at load, naming the tensor, not at the first
matmul.  ``expected_parameter_shapes`` is that list; ``check_model_file`` checks a
file's metadata, config, tensors and tokenizer against it (docs/onnx_format.md).
``CONFIG_FIELDS`` is the config's table of fields (type, default, range), and
``check_config`` applies it with the checks between fields, so that a file whose
config would load into garbage (a zero std, a NaN epsilon, undefined position
buckets) is refused at load, naming the field.

No torch or onnx here: the file is read with the engine's own reader.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .errors import ModelFileError, short_repr
from .image import RESAMPLE_NAMES

#: The ``pali.format`` versions this package reads.
FORMAT_VERSION = "1"
SUPPORTED_FORMATS = ("1",)

#: Metadata keys of a pali-engine ONNX file.
META_FORMAT = "pali.format"
META_CONFIG = "pali.config"
META_TOKENIZER = "pali.tokenizer"

#: dtypes a parameter may be stored in.
FLOAT_DTYPES = ("float32", "float16", "bfloat16")

Shape = Tuple[int, ...]


def _get(config: Any, name: str):
    if isinstance(config, Mapping):
        return config[name]
    return getattr(config, name)


def expected_parameter_shapes(config: Any) -> Dict[str, Shape]:
    """Every parameter of a "pali" model: ``{state_dict name: shape}``, in state_dict order.

    ``config`` is a PaliConfig or its dict.  Layouts are PyTorch's (Linear weight
    [out, in], Conv2d weight [out, in, kh, kw]).  With ``tie_word_embeddings`` the
    output projection is ``shared.weight`` scaled by d_model**-0.5 and there is no
    ``lm_head.weight``.
    """
    c = lambda name: _get(config, name)  # noqa: E731
    if c("architecture") != "pali":
        raise ValueError(f"unsupported architecture {c('architecture')!r} (this version knows 'pali')")
    W, P, C = c("vision_width"), c("patch_size"), c("num_channels")
    S, M = c("image_size"), c("vision_mlp_dim")
    D, H, dk, F = c("d_model"), c("num_heads"), c("d_kv"), c("d_ff")
    V, NB = c("vocab_size"), c("relative_attention_num_buckets")
    N = (S // P) ** 2
    inner = H * dk
    shapes: Dict[str, Shape] = {}
    shapes["vision.pos_embed"] = (1, N, W)
    shapes["vision.patch_embed.weight"] = (W, C, P, P)
    shapes["vision.patch_embed.bias"] = (W,)
    for i in range(c("vision_depth")):
        p = f"vision.blocks.{i}."
        shapes[p + "norm1.weight"] = (W,)
        shapes[p + "norm1.bias"] = (W,)
        for proj in ("q", "k", "v", "out"):
            shapes[p + f"attn.{proj}.weight"] = (W, W)
            shapes[p + f"attn.{proj}.bias"] = (W,)
        shapes[p + "norm2.weight"] = (W,)
        shapes[p + "norm2.bias"] = (W,)
        shapes[p + "mlp.fc1.weight"] = (M, W)
        shapes[p + "mlp.fc1.bias"] = (M,)
        shapes[p + "mlp.fc2.weight"] = (W, M)
        shapes[p + "mlp.fc2.bias"] = (W,)
    shapes["vision.norm.weight"] = (W,)
    shapes["vision.norm.bias"] = (W,)
    shapes["projector.weight"] = (D, W)
    shapes["projector.bias"] = (D,)
    shapes["shared.weight"] = (V, D)

    def attention(prefix: str) -> None:
        shapes[prefix + "q.weight"] = (inner, D)
        shapes[prefix + "k.weight"] = (inner, D)
        shapes[prefix + "v.weight"] = (inner, D)
        shapes[prefix + "o.weight"] = (D, inner)

    def ffn(prefix: str) -> None:
        shapes[prefix + "wi_0.weight"] = (F, D)
        shapes[prefix + "wi_1.weight"] = (F, D)
        shapes[prefix + "wo.weight"] = (D, F)

    shapes["encoder.relative_attention_bias.weight"] = (NB, H)
    for i in range(c("encoder_layers")):
        p = f"encoder.blocks.{i}."
        shapes[p + "attn_norm.weight"] = (D,)
        attention(p + "attn.")
        shapes[p + "ffn_norm.weight"] = (D,)
        ffn(p + "ffn.")
    shapes["encoder.final_norm.weight"] = (D,)
    shapes["decoder.relative_attention_bias.weight"] = (NB, H)
    for i in range(c("decoder_layers")):
        p = f"decoder.blocks.{i}."
        shapes[p + "self_attn_norm.weight"] = (D,)
        attention(p + "self_attn.")
        shapes[p + "cross_attn_norm.weight"] = (D,)
        attention(p + "cross_attn.")
        shapes[p + "ffn_norm.weight"] = (D,)
        ffn(p + "ffn.")
    shapes["decoder.final_norm.weight"] = (D,)
    if not c("tie_word_embeddings"):
        shapes["lm_head.weight"] = (V, D)
    return shapes


#: Bounds that keep every shape the config implies far inside 64-bit arithmetic
#: (a product of any three sizes, or of two sequence lengths and a width, fits),
#: and far beyond any real model.
MAX_WIDTH = 1 << 20
MAX_HEADS = 1 << 12
MAX_HEAD_DIM = 1 << 16
MAX_IMAGE_SIZE = 1 << 16
MAX_PATCHES = 1 << 20
MAX_LAYERS = 1 << 10
MAX_BUCKETS = 1 << 16
MAX_TOKENS = 1 << 20
MAX_INT32 = (1 << 31) - 1

#: The largest finite float32: the native engine holds config floats in float32.
FLOAT32_MAX = 3.4028234663852886e38

REQUIRED = object()


@dataclass(frozen=True)
class ConfigField:
    """One field of ``pali.config``.

    ``kind``: "int" (a JSON integer, not a bool), "float" (a finite number that
    stays finite as float32), "floats" (a list of such numbers), "bool" or "str".
    ``default``: REQUIRED when the file must give it.  ``low``/``high``: the
    inclusive range of an int; ``positive``: a float (or each float) must be > 0;
    ``choices``: the strings a str may be.
    """

    name: str
    kind: str
    default: Any = REQUIRED
    low: Optional[int] = None
    high: Optional[int] = None
    positive: bool = False
    choices: Tuple[str, ...] = ()


def _size(name: str, high: int, low: int = 1) -> ConfigField:
    return ConfigField(name, "int", low=low, high=high)


def _token_id(name: str, default: Any = REQUIRED) -> ConfigField:
    # The upper bound is vocab_size (a relation, checked after the fields).
    return ConfigField(name, "int", default, low=0, high=MAX_WIDTH - 1)


#: Every field of the "pali" architecture's config (export/config.py writes all of
#: them; the C++ PaliConfig reads all but resample), in the exporter's order.
CONFIG_FIELDS: Tuple[ConfigField, ...] = (
    ConfigField("architecture", "str", choices=("pali",)),
    _size("image_size", MAX_IMAGE_SIZE),
    _size("patch_size", MAX_IMAGE_SIZE),
    # Images are preprocessed to RGB.
    _size("num_channels", 3, low=3),
    ConfigField("image_mean", "floats"),
    ConfigField("image_std", "floats", positive=True),
    ConfigField("resample", "str", "bilinear", choices=RESAMPLE_NAMES),
    _size("vision_width", MAX_WIDTH),
    _size("vision_depth", MAX_LAYERS),
    _size("vision_heads", MAX_HEADS),
    _size("vision_mlp_dim", MAX_WIDTH),
    ConfigField("vision_layer_norm_eps", "float", 1e-6, positive=True),
    _size("d_model", MAX_WIDTH),
    _size("d_kv", MAX_HEAD_DIM),
    _size("num_heads", MAX_HEADS),
    _size("d_ff", MAX_WIDTH),
    _size("encoder_layers", MAX_LAYERS),
    _size("decoder_layers", MAX_LAYERS),
    ConfigField("feed_forward_proj", "str", choices=("gated-gelu", "gated-silu")),
    ConfigField("layer_norm_epsilon", "float", 1e-6, positive=True),
    # T5's bucketing needs max_exact = num_buckets // 4 >= 1 in the bidirectional encoder.
    _size("relative_attention_num_buckets", MAX_BUCKETS, low=4),
    _size("relative_attention_max_distance", MAX_INT32),
    _size("vocab_size", MAX_WIDTH),
    ConfigField("tie_word_embeddings", "bool"),
    _token_id("pad_token_id"),
    _token_id("eos_token_id"),
    _token_id("unk_token_id", 2),
    _token_id("decoder_start_token_id"),
    _size("max_prompt_tokens", MAX_TOKENS),
    _size("max_new_tokens", MAX_TOKENS),
)

TOKEN_ID_FIELDS = ("pad_token_id", "eos_token_id", "unk_token_id", "decoder_start_token_id")


def _describe(value: Any) -> str:
    """A JSON value, shortly, for an error message (never the whole of a long or deep value)."""
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    return short_repr(value)


def _as_float32_number(value: Any, what: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    with np.errstate(over="ignore"):
        rounded = float(np.float32(number))
    if not math.isfinite(rounded):
        raise ValueError(f"{what} must be a finite number (float32), got {_describe(value)}")
    if positive and not rounded > 0:
        raise ValueError(f"{what} must be > 0, got {_describe(value)}")
    return number


def _check_field(field: ConfigField, value: Any) -> Any:
    what = f"field {field.name!r}"
    if field.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} must be an integer, got {_describe(value)}")
        if not field.low <= value <= field.high:
            expected = str(field.low) if field.low == field.high else f"between {field.low} and {field.high}"
            raise ValueError(f"{what} must be {expected}, got {_describe(value)}")
        return int(value)
    if field.kind == "float":
        return _as_float32_number(value, what, field.positive)
    if field.kind == "floats":
        if not isinstance(value, list):
            raise ValueError(f"{what} must be a list of numbers, got {_describe(value)}")
        return [_as_float32_number(v, f"{what}[{i}]", field.positive) for i, v in enumerate(value)]
    if field.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{what} must be true or false, got {_describe(value)}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {_describe(value)}")
    if field.choices and value not in field.choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, field.choices))}, got {_describe(value)}")
    return value


def _check_relations(c: Dict[str, Any]) -> None:
    if c["image_size"] % c["patch_size"]:
        raise ValueError(f"field 'image_size' ({c['image_size']}) must be a multiple of "
                         f"patch_size ({c['patch_size']})")
    patches = (c["image_size"] // c["patch_size"]) ** 2
    if patches > MAX_PATCHES:
        raise ValueError(f"fields 'image_size' and 'patch_size' give {patches} patches; at most {MAX_PATCHES}")
    if c["vision_width"] % c["vision_heads"]:
        raise ValueError(f"field 'vision_width' ({c['vision_width']}) must be a multiple of "
                         f"vision_heads ({c['vision_heads']})")
    for name in ("image_mean", "image_std"):
        if len(c[name]) != c["num_channels"]:
            raise ValueError(f"field {name!r} must have one value per channel ({c['num_channels']}), "
                             f"got {len(c[name])}")
    for channel, (mean, std) in enumerate(zip(c["image_mean"], c["image_std"])):
        # Pixels in [0, 1] become (x - mean) / std, in float32.
        if max(abs(mean), abs(1 - mean)) / std > FLOAT32_MAX:
            raise ValueError(f"fields 'image_mean' and 'image_std' take channel {channel}'s pixels "
                             "beyond float32's range")
    for name in TOKEN_ID_FIELDS:
        if c[name] >= c["vocab_size"]:
            raise ValueError(f"field {name!r} ({c[name]}) must be below vocab_size ({c['vocab_size']})")
    # T5's log-spaced buckets begin at max_exact = num_buckets // 2 in the causal
    # decoder (num_buckets // 4 in the encoder) and divide by log(max_distance / max_exact).
    max_exact = c["relative_attention_num_buckets"] // 2
    if c["relative_attention_max_distance"] <= max_exact:
        raise ValueError(f"field 'relative_attention_max_distance' ({c['relative_attention_max_distance']}) "
                         f"must exceed relative_attention_num_buckets // 2 ({max_exact})")


def check_config(config: Any) -> Dict[str, Any]:
    """A ``pali.config`` object checked field by field and as a whole; returns every
    field of CONFIG_FIELDS, normalised, with defaults filled in (unknown fields dropped).

    Raises ValueError naming the field and what is wrong with it.
    """
    if not isinstance(config, dict):
        raise ValueError(f"is not a JSON object, got {_describe(config)}")
    if "architecture" in config and config["architecture"] != "pali":
        raise ValueError(f"architecture {_describe(config['architecture'])} is not supported by this version "
                         "(it reads 'pali')")
    absent = [f.name for f in CONFIG_FIELDS if f.default is REQUIRED and f.name not in config]
    if absent:
        raise ValueError(f"lacks the field(s) {', '.join(absent)}")
    checked = {f.name: _check_field(f, config.get(f.name, f.default)) for f in CONFIG_FIELDS}
    _check_relations(checked)
    return checked


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def check_tensors(path: str, config: Any, tensors: Mapping[str, Tuple[str, Shape]]) -> None:
    """Raises ModelFileError naming the first missing, misshapen, mistyped or unused tensor.

    ``tensors``: ``{name: (dtype name, shape)}`` as ``pali_engine.inspect`` gives them.
    """
    try:
        expected = expected_parameter_shapes(config)
    except (KeyError, AttributeError, TypeError, ValueError, ZeroDivisionError) as error:
        raise ModelFileError(f"{path}: 'pali.config' does not describe a model: {error!r}") from None
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(
            f"{path}: tensor {missing[0]!r} is missing{more}; the config implies "
            f"{len(expected)} parameters and the file has {len(tensors)} tensors"
        )
    for name, shape in expected.items():
        dtype, actual = tensors[name]
        if tuple(actual) != tuple(shape):
            raise ModelFileError(
                f"{path}: tensor {name!r} has shape {_fmt(actual)} but the config implies {_fmt(shape)}"
            )
        if dtype not in FLOAT_DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {dtype}; expected one of {FLOAT_DTYPES}")
    unused = [name for name in tensors if name not in expected]
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise ModelFileError(
            f"{path}: tensor {unused[0]!r}{more} is not a parameter of the model its config describes (unused)"
        )


def parse_metadata(path: str, metadata: Mapping[str, str]) -> Tuple[Dict[str, Any], bytes]:
    """Checks ``pali.format``, ``pali.config`` and ``pali.tokenizer``; returns (config dict, tokenizer bytes)."""
    if META_FORMAT not in metadata and META_CONFIG not in metadata:
        raise ModelFileError(
            f"{path}: no pali metadata ('{META_FORMAT}', '{META_CONFIG}'); not a pali-engine model "
            "(write one with: pali-engine export CHECKPOINT -o NAME.onnx)"
        )
    version = metadata.get(META_FORMAT)
    if version is None:
        raise ModelFileError(f"{path}: no '{META_FORMAT}' metadata; not a pali-engine model")
    if version not in SUPPORTED_FORMATS:
        raise ModelFileError(
            f"{path}: unsupported '{META_FORMAT}' version {version!r}; this pali-engine reads "
            f"version {', '.join(SUPPORTED_FORMATS)} (a newer pali-engine may read it)"
        )
    text = metadata.get(META_CONFIG)
    if text is None:
        raise ModelFileError(f"{path}: no '{META_CONFIG}' metadata; not a pali-engine model")
    try:
        config = json.loads(text)
    except RecursionError:
        raise ModelFileError(f"{path}: '{META_CONFIG}' metadata is nested too deeply to be a config") from None
    except ValueError as error:  # JSONDecodeError, or an integer of more digits than Python converts
        reason = str(error).split(";")[0][:100]
        raise ModelFileError(f"{path}: '{META_CONFIG}' metadata is not valid JSON: {reason}") from None
    try:
        config = check_config(config)
    except ValueError as error:
        raise ModelFileError(f"{path}: '{META_CONFIG}' {error}") from None
    encoded = metadata.get(META_TOKENIZER)
    if not encoded:
        raise ModelFileError(f"{path}: no '{META_TOKENIZER}' metadata; the file carries no tokenizer")
    try:
        tokenizer = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ModelFileError(f"{path}: '{META_TOKENIZER}' metadata is not valid base64: {error}") from None
    return config, tokenizer


def check_model_file(path: str | os.PathLike) -> Tuple[Dict[str, Any], bytes]:
    """Opens ``path`` with the native reader and checks it completely (metadata and every tensor).

    Returns (config dict, SentencePiece model bytes); raises ModelFileError naming the file.
    """
    from .model_file import inspect

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    info = inspect(path)
    config, tokenizer = parse_metadata(path, info["metadata"])
    check_tensors(path, config, info["tensors"])
    return config, tokenizer
