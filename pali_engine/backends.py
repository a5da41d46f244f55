"""Which backend class runs which file: (architecture, backend name) -> class.

Why one table: ``Engine.load`` finds the class for a file's architecture and
the backend asked for here, and says what exists when the pair is unknown; an
architecture or a backend is added by one line below. The classes are named
as "module:Class" and imported only when chosen, so that importing this table
loads neither onnxruntime nor the backends.
"""

from __future__ import annotations

import importlib
import json
from typing import Dict, Mapping, Tuple

from .errors import ModelFileError, short_repr

#: The architecture of a file whose ``pali.config`` names none.
DEFAULT_ARCHITECTURE = "pali"

BACKENDS: Dict[Tuple[str, str], str] = {
    ("pali", "native"): "pali_engine.native_backend:NativeBackend",
    ("pali", "onnxruntime"): "pali_engine.ort_backend:OrtBackend",
    ("paligemma", "native"): "pali_engine.paligemma_backend:PaliGemmaBackend",
    ("paligemma", "onnxruntime"): "pali_engine.ort_backend:PaliGemmaOrtBackend",
}


def architectures() -> Tuple[str, ...]:
    """The architectures some backend runs, in table order."""
    return tuple(dict.fromkeys(architecture for architecture, _ in BACKENDS))


def backend_names(architecture: str | None = None) -> Tuple[str, ...]:
    """The backends of ``architecture`` (of any architecture when None), in table order."""
    return tuple(dict.fromkeys(name for arch, name in BACKENDS if architecture in (None, arch)))


def backend_class(architecture: str, backend: str) -> type:
    """The class that runs ``architecture``'s files with ``backend``; ValueError listing that
    architecture's backends when there is none."""
    if architecture not in architectures():
        raise ValueError(f"no backend runs architecture {short_repr(architecture)}; "
                         f"the architectures: {', '.join(architectures())}")
    target = BACKENDS.get((architecture, backend)) if isinstance(backend, str) else None
    if target is None:
        raise ValueError(f"backend must be one of {', '.join(backend_names(architecture))} for "
                         f"{architecture!r} files, got {short_repr(backend)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def file_architecture(path: str, metadata: Mapping[str, str]) -> str:
    """The architecture a file's ``pali.config`` names; DEFAULT_ARCHITECTURE when it names none or
    the config cannot be read (that architecture's own check then says what is wrong with it).

    Raises ModelFileError naming the file when the architecture is one no backend runs.
    """
    try:
        config = json.loads(metadata.get("pali.config", ""))
    except (ValueError, RecursionError):
        return DEFAULT_ARCHITECTURE
    architecture = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(architecture, str):
        return DEFAULT_ARCHITECTURE
    if architecture not in architectures():
        raise ModelFileError(f"{path}: 'pali.config' names the architecture {short_repr(architecture)}; "
                             f"this pali-engine reads {', '.join(architectures())}")
    return architecture
