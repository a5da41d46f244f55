"""The native backend: the model on the engine's own C++ kernels.

``Engine.load(path)`` (backend="native", the default) uses it. The model file is
checked and mapped by the native reader, the weights are prepared once in the
chosen storage (float32, float16, or int8: int8 weights and int8 activations,
quantized per row at run time, with integer dot products), and every call runs
with the GIL released, so several Python threads may share one engine.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

import numpy as np

from . import _native
from .backend import check_scheduling, check_threads
from .dtypes import weight_format
from .errors import ModelFileError
from .generation import GenerationOptions
from .native_model_backend import NativeModelBackend


class NativeBackend(NativeModelBackend):
    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: Optional[int] = None,
                 dtype: str = "float32", info: Optional[Dict[str, Any]] = None,
                 max_batch: Optional[int] = None, max_queue: Optional[int] = None):
        format_name = weight_format(dtype)
        threads = check_threads(threads)
        limits = check_scheduling(max_batch, max_queue)
        if device != "cpu":
            core = _native.core_for(device)
            raise ValueError(f"device {device!r}: the native engine runs its models on the CPU only "
                             f"(module {core.__name__} has no model for it)")
        super().__init__(path, info)
        core = _native.core_for(device)
        self.dtype = dtype
        self.threads = threads or 0
        # The model copies what it needs; the file is unmapped when it goes out of scope.
        try:
            self._model = core.load_model(core.OnnxFile(self.path), format_name, self.threads,
                                          self.config, **limits)
        except ModelFileError:
            raise
        except ValueError as error:  # the arguments are checked above: what is left is the file's config
            raise ModelFileError(f"{self.path}: the native engine refuses 'pali.config': {error}") from None

    def _logits(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                decoder_input_ids: np.ndarray) -> np.ndarray:
        """The teacher-forced forward: float32[B, T, V], as the ONNX graph computes it."""
        return self._model.forward(pixel_values, input_ids, attention_mask, decoder_input_ids)

    def _native_options(self, options: GenerationOptions) -> dict:
        # The options as parsed (a seed of None: the native search draws one).
        return dataclasses.asdict(options)

    def _eos_id(self) -> int:
        return int(self.config["eos_token_id"])
