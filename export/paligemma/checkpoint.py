"""Reading a local Hugging Face PaliGemma directory: config, weights, tokenizer, image settings.

Why: the converter must accept what ``save_pretrained`` writes and what the
Hub's checkpoints hold (config.json, model.safetensors or a sharded
model.safetensors.index.json, tokenizer.model, preprocessor_config.json) with
no network, and turn it into one flat description the graph is built from
(``read_checkpoint``).  Weights are located, not loaded: each tensor's file,
offset, dtype and shape come from the safetensors headers, read here without
the safetensors package, and ``read_chunks`` reads one tensor's bytes a piece
at a time, so that a checkpoint larger than memory converts.  Anything it cannot convert exactly fails here, naming
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
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

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
    #: every tensor of the safetensors files, located (not read)
    weights: List["WeightEntry"] = field(default_factory=list)
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


#: safetensors dtypes of float tensors -> bytes per element.
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
#: A safetensors header larger than this is not a checkpoint's (they are a few hundred KB).
MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class WeightEntry:
    """One tensor of a safetensors file, located but not read: where its bytes are and what they are."""

    name: str  #: canonical (transformers 5) name
    name_in_file: str
    path: str
    dtype: str  #: safetensors dtype: "BF16", "F16", "F32", "F64", ...
    shape: Tuple[int, ...]
    offset: int  #: absolute byte offset of the data in ``path``
    nbytes: int


def read_safetensors_header(path: str) -> List[WeightEntry]:
    """The tensors a safetensors file holds (its JSON header), checked to lie inside the file."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: cannot read it as safetensors: {why}")

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise bad("shorter than its 8-byte header length")
        header_bytes = int.from_bytes(prefix, "little")
        if header_bytes > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"a header of {header_bytes} bytes in a file of {size}")
        try:
            header = json.loads(f.read(header_bytes))
        except ValueError as error:
            raise bad(f"the header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_start, data_bytes = 8 + header_bytes, size - 8 - header_bytes
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            valid = (isinstance(dtype, str) and all(isinstance(d, int) and d >= 0 for d in shape)
                     and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_bytes)
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise bad(f"tensor {name!r} has a malformed entry {info!r}")
        if dtype in FLOAT_DTYPES and end - begin != math.prod(shape) * FLOAT_DTYPES[dtype]:
            raise bad(f"tensor {name!r}: {end - begin} bytes for a {dtype} tensor of shape {list(shape)}")
        entries.append(WeightEntry(canonical_name(name), name, path, dtype, shape, data_start + begin, end - begin))
    return entries


def _list_weights(directory: str) -> List[WeightEntry]:
    files = _weight_files(directory)
    listing: List[WeightEntry] = []
    seen: Dict[str, str] = {}
    for path, names in files.items():
        in_file = {entry.name_in_file: entry for entry in read_safetensors_header(path)}
        missing = sorted(set(names) - set(in_file))
        if missing:
            raise CheckpointError(f"{path}: tensor {missing[0]!r} named in {WEIGHTS_INDEX_FILE} is not in it")
        for name in names or in_file:
            entry = in_file[name]
            if entry.name in seen:
                raise CheckpointError(f"{path}: tensor {name!r} is also in {seen[entry.name]}")
            seen[entry.name] = path
            listing.append(entry)
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


def select_weights(checkpoint: Checkpoint, expected: Dict[str, Tuple[int, ...]]) -> Dict[str, WeightEntry]:
    """The checkpoint's tensor for each name of ``expected`` (canonical name -> shape), in that order.

    Nothing is read but the headers.  A tied ``lm_head.weight`` in the checkpoint is dropped (the file
    keeps the embedding only).  Fails naming the tensor that is missing, misshapen, not a float or not a
    parameter of the model.
    """
    found: Dict[str, WeightEntry] = {}
    for entry in checkpoint.weights:
        where, name = entry.path, entry.name_in_file
        if entry.name not in expected:
            if entry.name == "lm_head.weight" and checkpoint.config["tie_word_embeddings"]:
                continue
            raise CheckpointError(f"{where}: tensor {name!r} is not a parameter of the model config.json describes")
        if entry.shape != tuple(expected[entry.name]):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {list(entry.shape)}; "
                                  f"config.json implies {list(expected[entry.name])}")
        if entry.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {entry.dtype}; expected floats "
                                  f"({', '.join(FLOAT_DTYPES)})")
        found[entry.name] = entry
    missing = [name for name in expected if name not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{checkpoint.directory}: tensor {missing[0]!r}{more} is missing from the "
                              "safetensors files")
    return {name: found[name] for name in expected}


def read_chunks(entry: WeightEntry, chunk_bytes: int) -> Iterator[bytearray]:
    """The tensor's bytes, in pieces of at most ``chunk_bytes`` (whole elements), read with plain reads.

    Plain reads, not a memory map: pages of a mapped file would count in the converter's resident
    memory until the whole file is unmapped.
    """
    step = max(1, chunk_bytes // FLOAT_DTYPES[entry.dtype]) * FLOAT_DTYPES[entry.dtype]
    with open(entry.path, "rb") as f:
        f.seek(entry.offset)
        for start in range(0, entry.nbytes, step):
            chunk = bytearray(min(step, entry.nbytes - start))
            if f.readinto(chunk) != len(chunk):
                raise CheckpointError(f"{entry.path}: tensor {entry.name_in_file!r} ends past the end of the file")
            yield chunk


def source_dtype(entries: Iterable[WeightEntry]) -> Optional[str]:
    """The one dtype all tensors share ("float32", "bfloat16", "float16", "float64"), or None when mixed."""
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    dtypes = {names.get(entry.dtype, entry.dtype) for entry in entries}
    return dtypes.pop() if len(dtypes) == 1 else None
