"""The "paligemma" architecture (PaliGemma 1 and 2) behind the Engine.

Why backends of their own: the prompts, images and token conventions are
PaliGemma's (``PaliGemmaProcessor``: ``<image>`` x N, ``<bos>``, the prompt,
``\\n``, left padding; SigLIP's preprocessing), the model is decoder-only, and
the file is checked against its own tensor list. The inputs are the
architecture's processor's (``PaliGemmaProcessor``), which every "paligemma"
backend holds; ``PaliGemmaBackend`` runs the model on the engine's own
kernels, ``ort_backend.PaliGemmaOrtBackend`` on onnxruntime. Options,
batching, streaming and results are the shared ones of ``backend.Backend``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

from . import _native
from .backend import check_scheduling, check_threads
from .dtypes import weight_format
from .errors import ModelFileError
from .generation import OPTION_NAMES, GenerationOptions
from .native_model_backend import NativeModelBackend


class PaliGemmaBackend(NativeModelBackend):
    """A "paligemma" file on the engine's own kernels (CPU)."""

    resize_modes = ("stretch",)

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: Optional[int] = None,
                 dtype: str = "float32", info: Optional[Dict[str, Any]] = None,
                 max_batch: Optional[int] = None, max_queue: Optional[int] = None):
        format_name = weight_format(dtype)
        threads = check_threads(threads)
        limits = check_scheduling(max_batch, max_queue)
        if device != "cpu":
            raise ValueError(f"device {device!r}: the native engine runs its models on the CPU only")
        super().__init__(path, info)
        self.dtype = dtype
        self.threads = threads or 0
        core = _native.core_for(device)
        try:
            self._model = core.load_model(core.OnnxFile(self.path), format_name, self.threads,
                                          self.config, **limits)
        except ModelFileError:
            raise
        except ValueError as error:
            raise ModelFileError(f"{self.path}: {error}") from None

    def _logits(self, pixel_values, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        return self._model.forward(pixel_values, input_ids, attention_mask, token_type_ids)

    def _native_options(self, options: GenerationOptions) -> dict:
        native = {name: getattr(options, name) for name in OPTION_NAMES if name != "seed"}
        native["seed"] = options.seed if options.seed is not None else int.from_bytes(os.urandom(8), "little")
        return native

    def _eos_id(self) -> int:
        return self.processor.eos_id
