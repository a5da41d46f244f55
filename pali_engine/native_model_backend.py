"""What the backends on the engine's own kernels share ("pali": native_backend,
"paligemma": paligemma_backend): the calls into the native model's scheduler
(a whole search, or a request submitted for an event loop to wait on) and its
results as hypotheses.

A subclass loads ``self._model`` (``core.load_model``) and says how its options
reach the native search (``_native_options``) and which token ends a sequence
(``_eos_id``).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from .backend import Backend, OnToken, PreparedRequest
from .generation import GenerationOptions, Hypothesis


class NativeModelBackend(Backend):
    can_submit = True

    def _native_options(self, options: GenerationOptions) -> dict:
        raise NotImplementedError

    def _eos_id(self) -> int:
        raise NotImplementedError

    def scheduler_stats(self) -> Dict[str, int]:
        return dict(self._model.scheduler_stats())

    def _search(self, pixel_values, input_ids, attention_mask, options: GenerationOptions,
                on_token: OnToken) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        results, timings = self._model.generate(pixel_values, input_ids, attention_mask,
                                                self._native_options(options), on_token)
        return self._hypotheses(results), dict(timings)

    def _hypotheses(self, results) -> List[List[Hypothesis]]:
        eos = self._eos_id()
        return [[Hypothesis(list(tokens) + ([eos] if finished else []), float(score))
                 for tokens, score, finished in per_input] for per_input in results]

    def submit(self, request: PreparedRequest, stream: bool = False):
        return self._model.submit(request.pixels, request.ids, request.mask, self._native_options(request.options),
                                  stream)

    def hypotheses(self, pending) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        results, timings = pending.result()
        return self._hypotheses(results), dict(timings)
