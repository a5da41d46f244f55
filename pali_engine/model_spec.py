"""What a pali-engine model file must contain, derived from its config alone.

Why: every backend (onnxruntime, the native engine) finds weights by their
PyTorch ``state_dict`` names, so a file whose tensors do not match what its
``pali.config`` implies must fail at load, naming the tensor, not at the first
matmul.  The config and the tensors are defined once, in C++, by the
architecture registry (csrc/models/architectures.h): ``check_config`` reads a
config through the architecture's field table (type, default, range, and the
relations between fields), so that a file whose config would load into
garbage (a zero std, a NaN epsilon, undefined position buckets) is refused at
load, naming the field; ``expected_parameter_shapes`` is the list of tensors
the architecture's model reads; ``check_model_file`` checks a file's metadata,
config, tensors and tokenizer against them (docs/onnx_format.md).

No torch or onnx here: the file is read with the engine's own reader.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import ModelFileError

#: The ``pali.format`` versions this package reads.
FORMAT_VERSION = "1"
SUPPORTED_FORMATS = ("1",)

#: Metadata keys of a pali-engine ONNX file.
META_FORMAT = "pali.format"
META_CONFIG = "pali.config"
META_TOKENIZER = "pali.tokenizer"

#: dtypes a parameter may be stored in.
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
#: A linear weight stored quantized (``pali-engine convert --dtype int8|int4``): int8 or int4 codes under its
#: name, its scales under the name + QUANTIZED_SCALE_SUFFIX (docs/paligemma.md, "Quantized files").
QUANTIZED_DTYPES = ("int8", "int4")
QUANTIZED_SCALE_SUFFIX = "_scale"
STORED_DTYPES = FLOAT_DTYPES + QUANTIZED_DTYPES

Shape = Tuple[int, ...]


def _core():
    from ._native import _core

    return _core


def _as_dict(config: Any) -> Any:
    """A config dict, or a JSON text, from a dict, a JSON text or a config object (export's PaliConfig)."""
    if isinstance(config, (Mapping, str)):
        return dict(config) if isinstance(config, Mapping) else config
    if hasattr(config, "to_dict"):
        return config.to_dict()
    import dataclasses

    return dataclasses.asdict(config)


def expected_parameter_shapes(config: Any) -> Dict[str, Shape]:
    """Every parameter the model of ``config`` reads: ``{state_dict name: shape}``, in the order it reads them.

    ``config``: a config dict (any architecture), its JSON text, or export's
    PaliConfig.  Layouts are PyTorch's (Linear weight [out, in], Conv2d weight
    [out, in, kh, kw]).  A "pali" model with ``tie_word_embeddings`` uses
    ``shared.weight`` as its output projection and has no ``lm_head.weight``.
    Raises ValueError naming a config field that does not describe a model.
    """
    return {name: tuple(shape) for name, shape in _core().expected_tensors(_as_dict(config))}


@dataclass(frozen=True)
class ConfigField:
    """One field of ``pali.config``, as the architecture's C++ field table defines it.

    ``kind``: "int" (a JSON integer, not a bool), "float" (a finite number that
    stays finite as float32), "floats" (a list of such numbers), "bool", "str",
    "strs" (a list of strings) or "object" (a section with ``fields`` of its own).
    ``default``: REQUIRED when the file must give it.  ``low``/``high``: the
    inclusive range of an int; ``positive``: a float (or each float) must be > 0;
    ``choices``: the strings a str may be; ``nullable``: null means "off".
    """

    name: str
    kind: str
    default: Any = None
    low: Optional[int] = None
    high: Optional[int] = None
    positive: bool = False
    choices: Tuple[str, ...] = ()
    nullable: bool = False
    fields: Tuple["ConfigField", ...] = ()


REQUIRED = object()


def _field(entry: Dict[str, Any]) -> ConfigField:
    return ConfigField(entry["name"], entry["kind"], REQUIRED if entry["required"] else entry["default"],
                       entry.get("low"), entry.get("high"), entry.get("positive", False),
                       tuple(entry.get("choices", ())), entry.get("nullable", False),
                       tuple(_field(e) for e in entry.get("fields", ())))


def config_fields(architecture: str = "pali") -> Tuple[ConfigField, ...]:
    """The architecture's config table, from C++."""
    return tuple(_field(e) for e in _core().config_fields(architecture))


def architectures() -> Dict[str, str]:
    """The architectures this build reads: {name: description}."""
    return dict(_core().architectures())


def __getattr__(name: str):
    # CONFIG_FIELDS: the "pali" table, read from the native module on first use.
    if name == "CONFIG_FIELDS":
        return config_fields("pali")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_config(config: Any) -> Dict[str, Any]:
    """A ``pali.config`` (a dict or its JSON text) checked field by field and as a whole
    by its architecture's table; returns every field of the table, normalised, with
    defaults filled in (unknown fields dropped).

    Raises ValueError naming the field and what is wrong with it.
    """
    return _core().check_config(_as_dict(config))


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def check_tensors(path: str, config: Any, tensors: Mapping[str, Tuple[str, Shape]]) -> None:
    """Raises ModelFileError naming the first missing, misshapen, mistyped or unused tensor.

    ``tensors``: ``{name: (dtype name, shape)}`` as ``pali_engine.inspect`` gives them.
    """
    try:
        expected = expected_parameter_shapes(config)
    except ValueError as error:
        raise ModelFileError(f"{path}: 'pali.config' {error}") from None
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
        if dtype not in STORED_DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {dtype}; expected one of {STORED_DTYPES}")
    # A quantized weight's scales (QUANTIZED_SCALE_SUFFIX) belong to it; the engine checks them as it loads.
    unused = [name for name in tensors if name not in expected and not (
        name.endswith(QUANTIZED_SCALE_SUFFIX) and tensors.get(name[:-len(QUANTIZED_SCALE_SUFFIX)], ("",))[0]
        in QUANTIZED_DTYPES)]
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
        config = check_config(text)
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


def check_model_file(path: str | os.PathLike,
                     info: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], bytes]:
    """Opens ``path`` with the native reader and checks it completely (metadata and every tensor).

    ``info``: the file as ``pali_engine.inspect`` describes it, when the caller has read it already.
    Returns (config dict, SentencePiece model bytes); raises ModelFileError naming the file.
    """
    from .model_file import inspect

    path = os.fspath(path)
    if info is None:
        if not os.path.isfile(path):
            raise ModelFileError(f"{path}: no such model file")
        info = inspect(path)
    config, tokenizer = parse_metadata(path, info["metadata"])
    check_tensors(path, config, info["tensors"])
    return config, tokenizer
