"""The "paligemma" architecture (PaliGemma 1 and 2) behind the Engine.

Why a backend of its own: the prompts, images and token conventions are
PaliGemma's (``PaliGemmaProcessor``: ``<image>`` x N, ``<bos>``, the prompt,
``\\n``, left padding; SigLIP's preprocessing), the model is decoder-only, and
the file is checked against its own tensor list (``paligemma_spec``). Options,
batching, streaming and results are the shared ones of ``backend.Backend``.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _native
from .backend import Backend, OnToken
from .errors import ModelFileError
from .generation import OPTION_NAMES, GenerationOptions, Hypothesis
from .paligemma_processor import PaliGemmaProcessor
from .paligemma_spec import DEFAULT_MAX_NEW_TOKENS, check_paligemma_file
from .tokenizer import Tokenizer

WEIGHT_FORMATS = {"float32": "f32", "float16": "f16", "int8": "i8"}


class PaliGemmaBackend(Backend):
    """A "paligemma" file on the engine's own kernels (CPU)."""

    #: PaliGemma's processor stretches every image to the square input.
    resize = "stretch"

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: Optional[int] = None,
                 dtype: str = "float32"):
        if dtype not in WEIGHT_FORMATS:
            raise ValueError(f"dtype must be one of {', '.join(WEIGHT_FORMATS)}, got {dtype!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= 4096):
            raise ValueError(f"threads must be an integer in [1, 4096] or None, got {threads!r}")
        if device != "cpu":
            raise ValueError(f"device {device!r}: the native engine runs its models on the CPU only")
        self.path = os.fspath(path)
        config, tokenizer_bytes = check_paligemma_file(self.path)
        self.config = dict(config)
        self.config.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        try:
            self.processor = PaliGemmaProcessor.from_config(config, tokenizer_bytes)
            self.tokenizer = Tokenizer(tokenizer_bytes, pad_id=self.processor.pad_id, eos_id=self.processor.eos_id)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{self.path}: the tokenizer or image settings are unusable: {error}") from None
        self.dtype = dtype
        self.threads = threads or 0
        core = _native.core_for(device)
        try:
            self._model = core.PaliGemmaModel(core.OnnxFile(self.path), self.config, WEIGHT_FORMATS[dtype],
                                              self.threads)
        except ModelFileError:
            raise
        except ValueError as error:
            raise ModelFileError(f"{self.path}: {error}") from None

    # ---- inputs ----
    def encode_prompts(self, prompts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Prompts -> (input_ids, attention_mask) int64[B, L], as PaliGemmaProcessor makes them (left-padded)."""
        rows = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} must be a str, got {type(prompt).__name__}")
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"prompt {i} is not valid Unicode (a lone surrogate at index {error.start})") from None
            rows.append(self.processor.encode(prompt)[0])
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.processor.pad_id, np.int64)
        mask = np.zeros((len(rows), length), np.int64)
        for b, row in enumerate(rows):
            ids[b, length - len(row):] = row
            mask[b, length - len(row):] = 1
        return ids, mask

    def pixel_values(self, images: Sequence) -> np.ndarray:
        """Images -> float32[B, 3, S, S] exactly as SiglipImageProcessor makes them."""
        return np.stack([self.processor.preprocess_image(image) for image in images])

    def parse_objects(self, text: str, image_size: Tuple[int, int]) -> list:
        """The objects of a detection or segmentation answer (boxes in the image's pixels, mask codes)."""
        from .segmentation import parse_segmentation

        return parse_segmentation(text, image_size)

    # ---- the model ----
    def logits(self, pixel_values, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        """Teacher-forced logits float32[B, L, V]; token_type_ids: 0 for the prefix, 1 for the suffix."""
        return self._model.forward(pixel_values, input_ids, attention_mask, token_type_ids, self.threads)

    def _search(self, pixel_values, input_ids, attention_mask, options: GenerationOptions,
                on_token: OnToken) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        native = {name: getattr(options, name) for name in OPTION_NAMES if name != "seed"}
        native["seed"] = options.seed if options.seed is not None else int.from_bytes(os.urandom(8), "little")
        results, timings = self._model.generate(pixel_values, input_ids, attention_mask, native, on_token,
                                                self.threads)
        eos = self.processor.eos_id
        hypotheses = [[Hypothesis(list(tokens) + ([eos] if finished else []), float(score))
                       for tokens, score, finished in per_input] for per_input in results]
        return hypotheses, dict(timings)
