"""The user-facing Engine: load a PaLI model file and generate text from images and prompts.

    engine = Engine.load("pali.onnx")          # or Engine.load() for the bundled model
    out = engine.generate(image, "caption en")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import model_file
from .errors import ModelFileError

_DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "pali-default.onnx"


def default_model_path() -> str:
    """Path of the bundled default model; FileNotFoundError when this build has none."""
    if not _DEFAULT_MODEL.is_file():
        raise FileNotFoundError(
            "this build of pali-engine has no bundled default model "
            f"(expected {_DEFAULT_MODEL.name} inside the package); pass a model path instead"
        )
    return str(_DEFAULT_MODEL)


class Engine:
    """A loaded model. Create it with ``Engine.load``."""

    def __init__(self, path: str, config: dict[str, Any], backend: str, device: str, dtype: str):
        self.path = path
        self.config = config
        self.backend = backend
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        *,
        backend: str = "native",
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
    ) -> "Engine":
        """Opens a model file (the bundled default model when ``path`` is None).

        Raises ModelFileError when the file is missing, broken or not a pali-engine model.
        """
        if path is None:
            path = default_model_path()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelFileError(f"{path}: no such model file")
        if backend not in ("native", "onnxruntime"):
            raise ValueError(f"backend must be 'native' or 'onnxruntime', got {backend!r}")
        impl = None
        if backend == "onnxruntime":
            from .ort_backend import OrtBackend

            impl = OrtBackend(path, device=device, threads=threads, dtype=dtype)
            config = impl.config
        else:
            config = model_file.read_config(path)
        engine = cls(path, config, backend, device, dtype)
        engine._backend = impl
        return engine

    def generate(self, image, prompt, **options):
        """Text for an image and a prompt; lists in, list out (see pali_engine.ort_backend.OrtBackend)."""
        if getattr(self, "_backend", None) is None:
            raise NotImplementedError(f"generation with backend={self.backend!r} is not available in this version")
        return self._backend.generate(image, prompt, **options)

    def stream(self, image, prompt, **options):
        """Yields the generated text piece by piece (one image, one prompt)."""
        if getattr(self, "_backend", None) is None:
            raise NotImplementedError(f"generation with backend={self.backend!r} is not available in this version")
        return self._backend.stream(image, prompt, **options)

    def __repr__(self) -> str:
        return f"Engine({self.path!r}, backend={self.backend!r}, device={self.device!r}, dtype={self.dtype!r})"
