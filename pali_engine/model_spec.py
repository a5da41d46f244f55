"""What a pali-engine model file must contain, derived from its config alone.

Why: every backend (onnxruntime, the native engine) finds weights by their
PyTorch ``state_dict`` names, so a file whose tensors do not match what its
``pali.config`` implies must fail at load, naming the tensor, not at the first
matmul.  ``expected_parameter_shapes`` is that list; ``check_model_file`` checks a
file's metadata, config, tensors and tokenizer against it (docs/onnx_format.md).

No torch or onnx here: the file is read with the engine's own reader.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, Dict, Mapping, Tuple

from .errors import ModelFileError

#: The ``pali.format`` versions this package reads.
FORMAT_VERSION = "1"
SUPPORTED_FORMATS = ("1",)

#: Metadata keys of a pali-engine ONNX file.
META_FORMAT = "pali.format"
META_CONFIG = "pali.config"
META_TOKENIZER = "pali.tokenizer"

#: Config fields the "pali" architecture needs (the rest of PaliConfig is optional here).
REQUIRED_CONFIG_FIELDS = (
    "architecture", "image_size", "patch_size", "num_channels", "image_mean", "image_std",
    "vision_width", "vision_depth", "vision_heads", "vision_mlp_dim", "d_model", "d_kv",
    "num_heads", "d_ff", "encoder_layers", "decoder_layers", "feed_forward_proj",
    "relative_attention_num_buckets", "relative_attention_max_distance", "vocab_size",
    "tie_word_embeddings", "pad_token_id", "eos_token_id", "decoder_start_token_id",
    "max_prompt_tokens", "max_new_tokens",
)

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
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: '{META_CONFIG}' metadata is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: '{META_CONFIG}' metadata is not a JSON object")
    absent = [name for name in REQUIRED_CONFIG_FIELDS if name not in config]
    if absent:
        raise ModelFileError(f"{path}: '{META_CONFIG}' lacks the field(s) {', '.join(absent)}")
    if config["architecture"] != "pali":
        raise ModelFileError(
            f"{path}: architecture {config['architecture']!r} is not supported by this version (it reads 'pali')"
        )
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
