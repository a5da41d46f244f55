"""The "paligemma" architecture (PaliGemma 1 and 2) behind the Engine.

Why backends of their own: the prompts, images and token conventions are
PaliGemma's (``PaliGemmaProcessor``: ``<image>`` x N, ``<bos>``, the prompt,
``\\n``, left padding; SigLIP's preprocessing), the model is decoder-only, and
the file is checked against its own tensor list (``paligemma_spec``).
``PaliGemmaInputs`` is what every "paligemma" backend shares (the file check,
the processor, the checks of ``logits``' inputs); ``PaliGemmaBackend`` runs the
model on the engine's own kernels, ``ort_backend.PaliGemmaOrtBackend`` on
onnxruntime. Options, batching, streaming and results are the shared ones of
``backend.Backend``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _native
from .backend import Backend, OnToken, _array, _check_token_ids, check_threads
from .errors import ModelFileError
from .generation import OPTION_NAMES, GenerationOptions, Hypothesis
from .paligemma_processor import PaliGemmaProcessor
from .paligemma_spec import DEFAULT_MAX_NEW_TOKENS, check_paligemma_file
from .tokenizer import Tokenizer

WEIGHT_FORMATS = {"float32": "f32", "float16": "f16", "int8": "i8"}


class PaliGemmaInputs(Backend):
    """A checked "paligemma" file with its processor; subclasses run the model (``_logits``, ``_search``)."""

    #: PaliGemma's processor stretches every image to the square input.
    resize = "stretch"
    resize_modes = ("stretch",)

    def __init__(self, path: str | os.PathLike, info: Optional[Dict[str, Any]] = None):
        self.path = os.fspath(path)
        config, tokenizer_bytes = check_paligemma_file(self.path, info)
        self.config = dict(config)
        self.config.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        try:
            # Left padding: generation continues every row after its last column.
            self.processor = PaliGemmaProcessor.from_config(config, tokenizer_bytes, padding_side="left")
            self.tokenizer = Tokenizer(tokenizer_bytes, pad_id=self.processor.pad_id, eos_id=self.processor.eos_id)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{self.path}: the tokenizer or image settings are unusable: {error}") from None

    # ---- inputs ----
    def encode_prompts(self, prompts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Prompts -> (input_ids, attention_mask) int64[B, L], as PaliGemmaProcessor makes them (left-padded)."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} must be a str, got {type(prompt).__name__}")
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"prompt {i} is not valid Unicode (a lone surrogate at index {error.start})") from None
        batch = self.processor.encode_batch(prompts)
        return batch["input_ids"], batch["attention_mask"]

    def pixel_values(self, images: Sequence) -> np.ndarray:
        """Images -> float32[B, 3, S, S] exactly as SiglipImageProcessor makes them."""
        return np.stack([self.processor.preprocess_image(image) for image in images])

    def parse_objects(self, text: str, image_size: Tuple[int, int]) -> list:
        """The objects of a detection or segmentation answer (boxes in the image's pixels, mask codes)."""
        from .segmentation import parse_segmentation

        return parse_segmentation(text, image_size)

    def check_logits_inputs(self, pixel_values: Any, input_ids: Any, attention_mask: Any,
                            token_type_ids: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The four inputs of ``logits`` as contiguous float32 / int64 arrays; ValueError (one line) when
        one is not an array of the right rank, dtype, shape or values."""
        c, v = self.config, self.config["vision_config"]
        pixels = _array(pixel_values, "pixel_values", 4, "fiu", "numbers")
        batch = pixels.shape[0]
        expected = (v["num_channels"], v["image_size"], v["image_size"])
        if batch < 1 or pixels.shape[1:] != expected:
            raise ValueError(f"pixel_values must have shape [batch >= 1, {', '.join(map(str, expected))}], "
                             f"got {list(pixels.shape)}")
        with np.errstate(over="ignore"):
            pixels = np.ascontiguousarray(pixels, np.float32)
        non_finite = pixels.size - int(np.count_nonzero(np.isfinite(pixels)))
        if non_finite:
            raise ValueError(f"pixel_values has {non_finite} NaN or infinite values (in float32)")
        ids = _array(input_ids, "input_ids", 2, "iu", "integer token ids")
        if ids.shape[0] != batch or ids.shape[1] < 1:
            raise ValueError(f"input_ids must have shape [{batch} (the batch of pixel_values), length >= 1], "
                             f"got {list(ids.shape)}")
        image = ids == c["image_token_index"]
        # The image token may lie past the text vocabulary (the graph and the native model map it).
        _check_token_ids(np.where(image, 0, ids), "input_ids", c["text_config"]["vocab_size"])
        images_per_row = image.sum(axis=1)
        if images_per_row.max() > c["num_image_tokens"]:
            row = int(np.argmax(images_per_row))
            raise ValueError(f"input_ids row {row} has {int(images_per_row[row])} <image> tokens, more than the "
                             f"{c['num_image_tokens']} image features")
        masks = []
        for name, value, meaning in (("attention_mask", attention_mask, "0 (padding) and 1 (token)"),
                                     ("token_type_ids", token_type_ids, "0 (prefix) and 1 (suffix)")):
            array = _array(value, name, 2, "biuf", "0s and 1s")
            if array.shape != ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {list(ids.shape)}, got {list(array.shape)}")
            if not np.isin(array, (0, 1)).all():
                raise ValueError(f"{name} must hold only {meaning}")
            masks.append(np.ascontiguousarray(array, np.int64))
        mask, types = masks
        # The graph takes every 0 for the prefix, the native model what precedes a row's first 1:
        # the same only when no token of type 0 follows a 1.
        for row in range(batch):
            ones = np.flatnonzero(types[row])
            if ones.size and ((mask[row, ones[0]:] == 1) & (types[row, ones[0]:] == 0)).any():
                raise ValueError(f"token_type_ids row {row} has a prefix token (0) after a suffix one (1); "
                                 "a row is its prefix, then its suffix")
        return pixels, np.ascontiguousarray(ids, np.int64), mask, types

    def logits(self, pixel_values: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> np.ndarray:
        """Teacher-forced logits float32[B, L, V]; token_type_ids: 0 for the prefix, 1 for the suffix."""
        return self._logits(*self.check_logits_inputs(pixel_values, input_ids, attention_mask, token_type_ids))


class PaliGemmaBackend(PaliGemmaInputs):
    """A "paligemma" file on the engine's own kernels (CPU)."""

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: Optional[int] = None,
                 dtype: str = "float32", info: Optional[Dict[str, Any]] = None):
        if dtype not in WEIGHT_FORMATS:
            raise ValueError(f"dtype must be one of {', '.join(WEIGHT_FORMATS)}, got {dtype!r}")
        threads = check_threads(threads)
        if device != "cpu":
            raise ValueError(f"device {device!r}: the native engine runs its models on the CPU only")
        super().__init__(path, info)
        self.dtype = dtype
        self.threads = threads or 0
        core = _native.core_for(device)
        try:
            self._model = core.load_model(core.OnnxFile(self.path), WEIGHT_FORMATS[dtype], self.threads,
                                          self.config)
        except ModelFileError:
            raise
        except ValueError as error:
            raise ModelFileError(f"{self.path}: {error}") from None

    def _logits(self, pixel_values, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        return self._model.forward(pixel_values, input_ids, attention_mask, token_type_ids)

    def _search(self, pixel_values, input_ids, attention_mask, options: GenerationOptions,
                on_token: OnToken) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        native = {name: getattr(options, name) for name in OPTION_NAMES if name != "seed"}
        native["seed"] = options.seed if options.seed is not None else int.from_bytes(os.urandom(8), "little")
        results, timings = self._model.generate(pixel_values, input_ids, attention_mask, native, on_token)
        eos = self.processor.eos_id
        hypotheses = [[Hypothesis(list(tokens) + ([eos] if finished else []), float(score))
                       for tokens, score, finished in per_input] for per_input in results]
        return hypotheses, dict(timings)
