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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _native
from .backend import Backend, OnToken, PreparedRequest, check_scheduling, check_threads
from .dtypes import weight_format
from .errors import ModelFileError
from .generation import GenerationOptions, Hypothesis


class NativeBackend(Backend):
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

    def scheduler_stats(self) -> Dict[str, int]:
        return dict(self._model.scheduler_stats())

    def _logits(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                decoder_input_ids: np.ndarray) -> np.ndarray:
        """The teacher-forced forward: float32[B, T, V], as the ONNX graph computes it."""
        return self._model.forward(pixel_values, input_ids, attention_mask, decoder_input_ids)

    def _native_options(self, options: GenerationOptions) -> dict:
        # The options as parsed (a seed of None: the native search draws one).
        return dataclasses.asdict(options)

    def _search(self, pixel_values, input_ids, attention_mask, options: GenerationOptions,
                on_token: OnToken) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        results, timings = self._model.generate(pixel_values, input_ids, attention_mask,
                                                self._native_options(options), on_token)
        return self._hypotheses(results), dict(timings)

    def _hypotheses(self, results) -> List[List[Hypothesis]]:
        eos = int(self.config["eos_token_id"])
        return [[Hypothesis(list(tokens) + ([eos] if finished else []), float(score))
                 for tokens, score, finished in per_input] for per_input in results]

    can_submit = True

    def submit(self, request: PreparedRequest, stream: bool = False):
        return self._model.submit(request.pixels, request.ids, request.mask, self._native_options(request.options),
                                  stream)

    def hypotheses(self, pending) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        results, timings = pending.result()
        return self._hypotheses(results), dict(timings)
