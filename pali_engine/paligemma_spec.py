"""What a "paligemma" model file must contain, from its config alone (no torch).

Why: the runtime (``model_spec.check_model_file``), the native engine and the
converter find PaliGemma's weights under transformers 5's
``PaliGemmaForConditionalGeneration.state_dict()`` names; this is that list,
with shapes, for the config as the converter writes it into ``pali.config``
(``vision_config`` and ``text_config`` nested, spelled as in config.json).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

Shape = Tuple[int, ...]


def expected_parameter_shapes(config: Dict[str, Any]) -> Dict[str, Shape]:
    """Every parameter of a "paligemma" model: {state_dict name: shape}, in state_dict order."""
    v, t = config["vision_config"], config["text_config"]
    W, M, C, P = v["hidden_size"], v["intermediate_size"], v["num_channels"], v["patch_size"]
    N = (v["image_size"] // P) ** 2
    D, F_, V = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    H, KV, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    shapes: Dict[str, Shape] = {}
    p = "model.vision_tower."
    shapes[p + "embeddings.patch_embedding.weight"] = (W, C, P, P)
    shapes[p + "embeddings.patch_embedding.bias"] = (W,)
    shapes[p + "embeddings.position_embedding.weight"] = (N, W)
    for i in range(v["num_hidden_layers"]):
        q = f"{p}encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[q + norm + ".weight"] = (W,)
            shapes[q + norm + ".bias"] = (W,)
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[q + f"self_attn.{proj}.weight"] = (W, W)
            shapes[q + f"self_attn.{proj}.bias"] = (W,)
        shapes[q + "mlp.fc1.weight"] = (M, W)
        shapes[q + "mlp.fc1.bias"] = (M,)
        shapes[q + "mlp.fc2.weight"] = (W, M)
        shapes[q + "mlp.fc2.bias"] = (W,)
    shapes[p + "post_layernorm.weight"] = (W,)
    shapes[p + "post_layernorm.bias"] = (W,)
    shapes["model.multi_modal_projector.linear.weight"] = (config["projection_dim"], W)
    shapes["model.multi_modal_projector.linear.bias"] = (config["projection_dim"],)
    p = "model.language_model."
    shapes[p + "embed_tokens.weight"] = (V, D)
    norms = ["input_layernorm", "post_attention_layernorm"]
    if t["model_type"] == "gemma2":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(t["num_hidden_layers"]):
        q = f"{p}layers.{i}."
        shapes[q + "self_attn.q_proj.weight"] = (H * hd, D)
        shapes[q + "self_attn.k_proj.weight"] = (KV * hd, D)
        shapes[q + "self_attn.v_proj.weight"] = (KV * hd, D)
        shapes[q + "self_attn.o_proj.weight"] = (D, H * hd)
        shapes[q + "mlp.gate_proj.weight"] = (F_, D)
        shapes[q + "mlp.up_proj.weight"] = (F_, D)
        shapes[q + "mlp.down_proj.weight"] = (D, F_)
        for norm in norms:
            shapes[q + norm + ".weight"] = (D,)
    shapes[p + "norm.weight"] = (D,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, D)
    return shapes


#: Generation length when the caller gives none (PaliGemma's configs set no default).
DEFAULT_MAX_NEW_TOKENS = 64

#: Fields the runtime reads; the native model checks their values (PaliGemmaConfig::validate).
REQUIRED_FIELDS = ("image_token_index", "num_image_tokens", "projection_dim", "image_size", "image_mean",
                   "image_std", "resample", "rescale_factor", "text_config", "vision_config")
TEXT_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim")
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size")


def file_architecture(metadata: Dict[str, str]) -> Any:
    """The ``architecture`` a file's ``pali.config`` names, or None when it names none (or is unreadable)."""
    import json

    try:
        config = json.loads(metadata.get("pali.config", ""))
    except (ValueError, RecursionError):
        return None
    return config.get("architecture") if isinstance(config, dict) else None


def check_paligemma_file(path: str) -> Tuple[Dict[str, Any], bytes]:
    """Checks a "paligemma" file's metadata and every tensor; returns (config, tokenizer bytes).

    Raises ModelFileError naming the file and the field or tensor.
    """
    import base64
    import binascii
    import json

    from .errors import ModelFileError
    from .model_file import inspect

    info = inspect(path)
    metadata = info["metadata"]
    if metadata.get("pali.format") != "1":
        raise ModelFileError(f"{path}: 'pali.format' is {metadata.get('pali.format')!r}; this pali-engine reads '1'")
    try:
        config = json.loads(metadata.get("pali.config", ""))
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{path}: 'pali.config' is not valid JSON: {str(error)[:100]}") from None
    if not isinstance(config, dict) or config.get("architecture") != "paligemma":
        raise ModelFileError(f"{path}: not a 'paligemma' model file")
    absent = [name for name in REQUIRED_FIELDS if name not in config]
    for section, fields in (("text_config", TEXT_FIELDS), ("vision_config", VISION_FIELDS)):
        if isinstance(config.get(section), dict):
            absent += [f"{section}.{name}" for name in fields if name not in config[section]]
        elif section not in absent:
            absent.append(section)
    if absent:
        raise ModelFileError(f"{path}: 'pali.config' lacks the field(s) {', '.join(absent)}")
    model_type = config["text_config"]["model_type"]
    if model_type not in ("gemma", "gemma2"):
        raise ModelFileError(f"{path}: 'pali.config' field text_config.model_type is {model_type!r}; "
                             "supported: gemma (PaliGemma 1), gemma2 (PaliGemma 2)")
    try:
        expected = expected_parameter_shapes(config)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        raise ModelFileError(f"{path}: 'pali.config' does not describe a model: {error!r}"[:300]) from None
    tensors = info["tensors"]
    for name, shape in expected.items():
        if name not in tensors:
            raise ModelFileError(f"{path}: tensor {name!r} is missing; the config implies {len(expected)} "
                                 f"parameters and the file has {len(tensors)} tensors")
        dtype, actual = tensors[name]
        if tuple(actual) != tuple(shape):
            raise ModelFileError(f"{path}: tensor {name!r} has shape {list(actual)} but the config implies "
                                 f"{list(shape)}")
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {dtype}")
    unused = [name for name in tensors if name not in expected]
    if unused:
        raise ModelFileError(f"{path}: tensor {unused[0]!r} is not a parameter of the model its config describes")
    try:
        tokenizer = base64.b64decode(metadata.get("pali.tokenizer", "").encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        tokenizer = b""
    if not tokenizer:
        raise ModelFileError(f"{path}: no valid 'pali.tokenizer' metadata; the file carries no tokenizer")
    return config, tokenizer
