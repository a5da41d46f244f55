"""Reading a local Hugging Face PaliGemma directory: config, weights, tokenizer, image settings.

Why: the converter must accept what ``save_pretrained`` writes and what the
Hub's checkpoints hold (config.json, model.safetensors or a sharded
model.safetensors.index.json, tokenizer.model, preprocessor_config.json) with
no network, and turn it into one flat description the graph is built from
(``read_checkpoint``).  Anything it cannot convert exactly fails here, naming
the file or the config field, not later as wrong logits.

Config fields that a config.json leaves out take the defaults of the
transformers config classes (``GemmaConfig``, ``Gemma2Config``,
``SiglipVisionConfig``), and a missing sub-config takes ``PaliGemmaConfig``'s,
as transformers would: the Hub's configs rely on them (``head_dim``, for one).

Weight names: the file written by the converter uses the names of
``PaliGemmaForConditionalGeneration.state_dict()`` in transformers 5
(``model.vision_tower.…``, ``model.multi_modal_projector.…``,
``model.language_model.…``, ``lm_head.weight`` when untied).  Checkpoints
saved by transformers 4 (``vision_tower.vision_model.…``,
``language_model.model.…``) and 5 (``vision_tower.…``) are renamed to them with
the rules transformers applies when it loads them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.model"
PREPROCESSOR_FILE = "preprocessor_config.json"
#: transformers 5 saves the image processor's settings here, under "image_processor".
PROCESSOR_FILE = "processor_config.json"

#: Defaults of the transformers config classes for the fields the graph depends on.
GEMMA_DEFAULTS: Dict[str, Any] = {
    "vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "pad_token_id": 0, "eos_token_id": 1,
    "bos_token_id": 2, "attention_bias": False,
}
GEMMA2_DEFAULTS: Dict[str, Any] = {
    "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "pad_token_id": 0, "eos_token_id": 1,
    "bos_token_id": 2, "attention_bias": False, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
}
SIGLIP_VISION_DEFAULTS: Dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6, "vision_use_head": True,
}
#: What ``PaliGemmaConfig`` puts in a sub-config the file does not have at all.
PALIGEMMA_VISION_DEFAULTS: Dict[str, Any] = {
    "intermediate_size": 4096, "hidden_size": 1152, "patch_size": 14, "image_size": 224,
    "num_hidden_layers": 27, "num_attention_heads": 16, "vision_use_head": False,
}
PALIGEMMA_TEXT_DEFAULTS: Dict[str, Any] = {
    "model_type": "gemma", "hidden_size": 2048, "num_hidden_layers": 18, "intermediate_size": 16384,
    "num_attention_heads": 8, "num_key_value_heads": 1, "vocab_size": 257152,
}
PALIGEMMA_DEFAULTS: Dict[str, Any] = {
    "image_token_index": 256000, "projection_dim": 2048, "tie_word_embeddings": True,
}

#: The activations the graph implements; "gelu" is exact (erf), the others the tanh approximation.
TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")
ACTIVATIONS = TANH_GELU + ("gelu",)

#: PIL resampling filters by the integer transformers stores (PILImageResampling).
RESAMPLE_BY_CODE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


class CheckpointError(ValueError):
    """The directory cannot be converted: a missing file or an unsupported config, named in the message."""


@dataclass
class Checkpoint:
    """What the converter needs from a Hugging Face directory."""

    directory: str
    config: Dict[str, Any]
    #: safetensors file -> [(canonical name, name in the file)]
    weight_files: Dict[str, List[Tuple[str, str]]] = field(default_factory=dict)
    tokenizer: bytes = b""


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read it as JSON: {error}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _field(where: str, values: Dict[str, Any], name: str, kind: type, *, positive: bool = False):
    """``values[name]`` checked to be a ``kind`` (int, float or bool; never a bool for a number)."""
    value = values[name]
    if kind is bool:
        ok = isinstance(value, bool)
    elif isinstance(value, bool):
        ok = False
    elif kind is float:
        ok = isinstance(value, (int, float)) and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise CheckpointError(f"{where}{name} must be {'a number' if kind is float else kind.__name__}, "
                              f"got {value!r}")
    if positive and not value > 0:
        raise CheckpointError(f"{where}{name} must be > 0, got {value!r}")
    return float(value) if kind is float else value


def _sub_config(raw: Dict[str, Any], key: str, class_defaults: Dict[str, Dict[str, Any]],
                paligemma_defaults: Dict[str, Any], default_type: str) -> Dict[str, Any]:
    given = raw.get(key)
    if given is None:
        given = dict(paligemma_defaults)
    if not isinstance(given, dict):
        raise CheckpointError(f"{CONFIG_FILE}: {key} must be an object")
    model_type = given.get("model_type", default_type)
    if model_type not in class_defaults:
        raise CheckpointError(
            f"{CONFIG_FILE}: {key}.model_type is {model_type!r}; supported: {', '.join(sorted(class_defaults))}"
        )
    merged = dict(class_defaults[model_type])
    merged.update(given)
    merged["model_type"] = model_type
    return merged


def _text_config(raw: Dict[str, Any]) -> Dict[str, Any]:
    t = _sub_config(raw, "text_config", {"gemma": GEMMA_DEFAULTS, "gemma2": GEMMA2_DEFAULTS},
                    PALIGEMMA_TEXT_DEFAULTS, "gemma")
    where = f"{CONFIG_FILE}: text_config."
    out: Dict[str, Any] = {"model_type": t["model_type"]}
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings"):
        out[name] = _field(where, t, name, int, positive=True)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        out[name] = _field(where, t, name, int)
    out["rms_norm_eps"] = _field(where, t, "rms_norm_eps", float, positive=True)
    if out["num_attention_heads"] % out["num_key_value_heads"]:
        raise CheckpointError(f"{where}num_attention_heads ({out['num_attention_heads']}) is not a multiple "
                              f"of num_key_value_heads ({out['num_key_value_heads']})")
    if t.get("attention_bias"):
        raise CheckpointError(f"{where}attention_bias is true; Gemma attention has no biases")
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"{where}rope_parameters.rope_type is {rope_type!r}; supported: 'default'")
    out["rope_theta"] = _field(where, {"rope_theta": rope.get("rope_theta", t.get("rope_theta", 10000.0))},
                               "rope_theta", float, positive=True)
    if t["model_type"] == "gemma":
        # GemmaConfig turns the legacy "gelu" into the tanh approximation, as the released weights expect.
        act = t.get("hidden_act") or t.get("hidden_activation") or "gelu_pytorch_tanh"
        act = "gelu_pytorch_tanh" if act == "gelu" else act
        if act not in TANH_GELU:
            raise CheckpointError(f"{where}hidden_act is {act!r}; supported: {', '.join(TANH_GELU)}")
        out["hidden_act"] = act
        return out
    act = t.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{where}hidden_activation is {act!r}; supported: {', '.join(ACTIVATIONS)}")
    out["hidden_activation"] = act
    out["query_pre_attn_scalar"] = _field(where, t, "query_pre_attn_scalar", float, positive=True)
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        out[name] = None if t.get(name) is None else _field(where, t, name, float, positive=True)
    out["sliding_window"] = None if t.get("sliding_window") is None else \
        _field(where, t, "sliding_window", int, positive=True)
    layer_types = t.get("layer_types")
    if layer_types is None:  # Gemma2Config's default: sliding on even layers
        layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                       for i in range(out["num_hidden_layers"])]
    if (not isinstance(layer_types, list) or len(layer_types) != out["num_hidden_layers"]
            or any(x not in ("sliding_attention", "full_attention") for x in layer_types)):
        raise CheckpointError(f"{where}layer_types must list 'sliding_attention' or 'full_attention' "
                              f"for each of the {out['num_hidden_layers']} layers")
    if out["sliding_window"] is None:
        layer_types = ["full_attention"] * out["num_hidden_layers"]
    out["layer_types"] = layer_types
    return out


def _vision_config(raw: Dict[str, Any]) -> Dict[str, Any]:
    v = _sub_config(raw, "vision_config", {"siglip_vision_model": SIGLIP_VISION_DEFAULTS},
                    PALIGEMMA_VISION_DEFAULTS, "siglip_vision_model")
    where = f"{CONFIG_FILE}: vision_config."
    out: Dict[str, Any] = {"model_type": v["model_type"]}
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_channels", "image_size", "patch_size"):
        out[name] = _field(where, v, name, int, positive=True)
    out["layer_norm_eps"] = _field(where, v, "layer_norm_eps", float, positive=True)
    if v["hidden_act"] not in ACTIVATIONS:
        raise CheckpointError(f"{where}hidden_act is {v['hidden_act']!r}; supported: {', '.join(ACTIVATIONS)}")
    out["hidden_act"] = v["hidden_act"]
    if v.get("vision_use_head"):
        raise CheckpointError(f"{where}vision_use_head is true; PaliGemma's vision tower has no pooling head")
    if out["num_channels"] != 3:
        raise CheckpointError(f"{where}num_channels is {out['num_channels']}; images are RGB (3)")
    if out["image_size"] % out["patch_size"]:
        raise CheckpointError(f"{where}image_size ({out['image_size']}) is not a multiple of "
                              f"patch_size ({out['patch_size']})")
    if out["hidden_size"] % out["num_attention_heads"]:
        raise CheckpointError(f"{where}hidden_size is not a multiple of num_attention_heads")
    return out


def _image_settings(directory: str, vision: Dict[str, Any], num_image_tokens: int) -> Dict[str, Any]:
    """The SiglipImageProcessor settings (preprocessor_config.json, or processor_config.json's
    "image_processor"), checked against the model."""
    path = os.path.join(directory, PREPROCESSOR_FILE)
    combined = os.path.join(directory, PROCESSOR_FILE)
    if os.path.isfile(path):
        p, where = _read_json(path), f"{PREPROCESSOR_FILE}: "
    elif os.path.isfile(combined) and isinstance(_read_json(combined).get("image_processor"), dict):
        p, where = _read_json(combined)["image_processor"], f"{PROCESSOR_FILE}: image_processor."
    else:
        raise CheckpointError(f"{path} does not exist (nor an image_processor in {PROCESSOR_FILE}): "
                              "the image settings (size, mean, std, resample) come from it")
    size = p.get("size", {"height": 224, "width": 224})
    if not isinstance(size, dict) or set(size) != {"height", "width"} or size["height"] != size["width"]:
        raise CheckpointError(f"{where}size must be {{'height': S, 'width': S}}, got {size!r}")
    if p.get("do_resize", True) is not True or size["height"] != vision["image_size"]:
        raise CheckpointError(f"{where}size/do_resize: images must be resized to the model's "
                              f"{vision['image_size']}x{vision['image_size']}, got {size!r}")
    resample = p.get("resample", 3)
    if resample not in RESAMPLE_BY_CODE:
        raise CheckpointError(f"{where}resample is {resample!r}; supported: {sorted(RESAMPLE_BY_CODE)}")
    if p.get("do_center_crop") or p.get("do_pad"):
        raise CheckpointError(f"{where}do_center_crop/do_pad are not supported")
    seq = p.get("image_seq_length", num_image_tokens)
    if seq != num_image_tokens:
        raise CheckpointError(f"{where}image_seq_length is {seq!r} but the vision tower gives "
                              f"{num_image_tokens} tokens")
    do_rescale = bool(p.get("do_rescale", True))
    do_normalize = bool(p.get("do_normalize", True))
    mean = p.get("image_mean", [0.5, 0.5, 0.5]) if do_normalize else [0.0, 0.0, 0.0]
    std = p.get("image_std", [0.5, 0.5, 0.5]) if do_normalize else [1.0, 1.0, 1.0]
    mean = [mean] * 3 if isinstance(mean, (int, float)) else mean
    std = [std] * 3 if isinstance(std, (int, float)) else std
    for name, values in (("image_mean", mean), ("image_std", std)):
        if (not isinstance(values, list) or len(values) != 3
                or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in values)):
            raise CheckpointError(f"{where}{name} must be 3 numbers, got {values!r}")
    if not all(x > 0 for x in std):
        raise CheckpointError(f"{where}image_std must be > 0, got {std!r}")
    factor = p.get("rescale_factor", 1 / 255) if do_rescale else 1.0
    if not isinstance(factor, (int, float)) or not factor > 0:
        raise CheckpointError(f"{where}rescale_factor must be > 0, got {factor!r}")
    return {
        "image_size": vision["image_size"],
        "resample": RESAMPLE_BY_CODE[resample],
        "rescale_factor": float(factor),
        "image_mean": [float(x) for x in mean],
        "image_std": [float(x) for x in std],
        "do_convert_rgb": bool(p.get("do_convert_rgb", True)),
    }


def read_config(directory: str) -> Dict[str, Any]:
    """config.json + preprocessor_config.json -> the ``pali.config`` of the converted file."""
    raw = _read_json(os.path.join(directory, CONFIG_FILE))
    model_type = raw.get("model_type")
    if model_type != "paligemma":
        raise CheckpointError(f"{CONFIG_FILE}: model_type is {model_type!r}; expected 'paligemma' "
                              "(PaliGemmaForConditionalGeneration)")
    archs = raw.get("architectures") or ["PaliGemmaForConditionalGeneration"]
    if archs != ["PaliGemmaForConditionalGeneration"]:
        raise CheckpointError(f"{CONFIG_FILE}: architectures is {archs!r}; "
                              "expected ['PaliGemmaForConditionalGeneration']")
    text, vision = _text_config(raw), _vision_config(raw)
    top = dict(PALIGEMMA_DEFAULTS)
    top.update({k: raw[k] for k in PALIGEMMA_DEFAULTS if k in raw})
    where = f"{CONFIG_FILE}: "
    image_token_index = _field(where, top, "image_token_index", int)
    projection_dim = _field(where, top, "projection_dim", int, positive=True)
    tie = _field(where, top, "tie_word_embeddings", bool)
    if projection_dim != text["hidden_size"]:
        raise CheckpointError(f"{where}projection_dim ({projection_dim}) must equal text_config.hidden_size "
                              f"({text['hidden_size']}): the projector feeds the decoder")
    num_image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    config: Dict[str, Any] = {
        "architecture": "paligemma",
        "model_type": "paligemma",
        "paligemma_version": 1 if text["model_type"] == "gemma" else 2,
        "image_token_index": image_token_index,
        "projection_dim": projection_dim,
        "tie_word_embeddings": tie,
        "num_image_tokens": num_image_tokens,
        "vocab_size": text["vocab_size"],
        "pad_token_id": text["pad_token_id"],
        "bos_token_id": text["bos_token_id"],
        "eos_token_id": text["eos_token_id"],
    }
    config.update(_image_settings(directory, vision, num_image_tokens))
    config["text_config"] = text
    config["vision_config"] = vision
    return config


# --------------------------------------------------------------------------
# weights

def canonical_name(name: str) -> str:
    """A checkpoint's tensor name -> its name in transformers 5's state_dict (the converted file's name)."""
    for old, new in (
        ("language_model.lm_head.", "lm_head."),
        ("language_model.model.", "model.language_model."),
        ("vision_tower.vision_model.", "model.vision_tower."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _weight_files(directory: str) -> Dict[str, List[str]]:
    """safetensors path -> the tensor names it holds (per the index when sharded)."""
    single = os.path.join(directory, WEIGHTS_FILE)
    index_path = os.path.join(directory, WEIGHTS_INDEX_FILE)
    if os.path.isfile(index_path):
        index = _read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no weight_map")
        files: Dict[str, List[str]] = {}
        for name, shard in weight_map.items():
            files.setdefault(os.path.join(directory, shard), []).append(name)
        for path in files:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path} does not exist (a shard named in {WEIGHTS_INDEX_FILE})")
        return files
    if os.path.isfile(single):
        return {single: []}  # names read from the file itself
    others = sorted(f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth")))
    hint = f" (found {', '.join(others)}: only safetensors weights are read)" if others else ""
    raise CheckpointError(f"{single} does not exist, nor {WEIGHTS_INDEX_FILE}{hint}")


def _list_weights(directory: str) -> Dict[str, List[Tuple[str, str]]]:
    from safetensors import safe_open

    files = _weight_files(directory)
    listing: Dict[str, List[Tuple[str, str]]] = {}
    seen: Dict[str, str] = {}
    for path, names in files.items():
        try:
            with safe_open(path, framework="pt") as f:
                in_file = list(f.keys())
        except Exception as error:  # safetensors raises its own error types for a bad file
            raise CheckpointError(f"{path}: cannot read it as safetensors: {error}") from None
        missing = sorted(set(names) - set(in_file))
        if missing:
            raise CheckpointError(f"{path}: tensor {missing[0]!r} named in {WEIGHTS_INDEX_FILE} is not in it")
        entries = []
        for name in names or in_file:
            canonical = canonical_name(name)
            if canonical in seen:
                raise CheckpointError(f"{path}: tensor {name!r} is also in {seen[canonical]}")
            seen[canonical] = path
            entries.append((canonical, name))
        listing[path] = entries
    return listing


def read_tokenizer(directory: str) -> bytes:
    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isfile(path):
        present = [f for f in ("tokenizer.json", "tokenizer_config.json") if os.path.isfile(os.path.join(directory, f))]
        also = f"; {' and '.join(present)} alone are not enough" if present else ""
        raise CheckpointError(f"{path} does not exist: the converted file carries the SentencePiece model "
                              f"(PaliGemma's tokenizer.model){also}")
    with open(path, "rb") as f:
        data = f.read()
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception as error:  # sentencepiece raises RuntimeError or OSError
        raise CheckpointError(f"{path}: not a SentencePiece model: {error}") from None
    return data


def read_checkpoint(directory: str | os.PathLike) -> Checkpoint:
    """Reads and checks everything the converter needs from ``directory`` (no weights loaded yet)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory} is not a directory (a Hugging Face PaliGemma checkpoint folder)")
    config = read_config(directory)
    checkpoint = Checkpoint(directory, config, _list_weights(directory), read_tokenizer(directory))
    _check_tokenizer(checkpoint)
    return checkpoint


def _check_tokenizer(checkpoint: Checkpoint) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(checkpoint.tokenizer)
    c, where = checkpoint.config, os.path.join(checkpoint.directory, TOKENIZER_FILE)
    if sp.get_piece_size() > c["vocab_size"]:
        raise CheckpointError(f"{where}: {sp.get_piece_size()} pieces, more than text_config.vocab_size "
                              f"({c['vocab_size']})")
    for name, got in (("bos_token_id", sp.bos_id()), ("eos_token_id", sp.eos_id()), ("pad_token_id", sp.pad_id())):
        if got != c[name]:
            raise CheckpointError(f"{where}: its {name[:-9]} id is {got}, config.json's text_config.{name} "
                                  f"is {c[name]}")
    if c["image_token_index"] < 0:
        raise CheckpointError(f"{CONFIG_FILE}: image_token_index must be >= 0, got {c['image_token_index']}")


def load_weights(checkpoint: Checkpoint, expected: Dict[str, Tuple[int, ...]]) -> Dict[str, Any]:
    """The tensors of ``expected`` (canonical name -> shape) as torch tensors of the checkpoint's dtype.

    A tied ``lm_head.weight`` in the checkpoint is dropped (the file keeps the embedding only).
    Fails naming the tensor that is missing, misshapen or not a parameter of the model.
    """
    from safetensors import safe_open

    tensors: Dict[str, Any] = {}
    for path, entries in checkpoint.weight_files.items():
        with safe_open(path, framework="pt") as f:
            for canonical, name in entries:
                if canonical not in expected:
                    if canonical == "lm_head.weight" and checkpoint.config["tie_word_embeddings"]:
                        continue
                    raise CheckpointError(f"{path}: tensor {name!r} is not a parameter of the model "
                                          f"config.json describes")
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != tuple(expected[canonical]):
                    raise CheckpointError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}; "
                                          f"config.json implies {list(expected[canonical])}")
                if not tensor.is_floating_point():
                    raise CheckpointError(f"{path}: tensor {name!r} has dtype {tensor.dtype}; expected floats")
                tensors[canonical] = tensor
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{checkpoint.directory}: tensor {missing[0]!r}{more} is missing from the "
                              "safetensors files")
    return tensors


def checkpoint_dtype(tensors: Dict[str, Any]) -> Optional[str]:
    """The one dtype all tensors share ("float32", "bfloat16", "float16"), or None when mixed."""
    dtypes = {str(t.dtype).replace("torch.", "") for t in tensors.values()}
    return dtypes.pop() if len(dtypes) == 1 else None
