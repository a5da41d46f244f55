"""The "pali" architecture's processor: what its models take in and what their answers mean.

Why apart from the backends: every backend of an architecture (the native
engine, onnxruntime) must feed its model the same arrays and read its answers
the same way, and each architecture has its own conventions (this one:
prompts eos-terminated and right-padded, at most ``max_prompt_tokens``;
images padded or stretched to the square input, resampled as the config says,
normalised by its mean and std; detection answers as ``<loc>`` boxes). A
backend holds one processor (``processors.processor_for``) and only runs the
model. PaliGemma's is ``paligemma_processor.PaliGemmaProcessor``.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np

from .image import RESIZE_MODES, preprocess
from .tokenizer import Tokenizer
from .validation import as_array, check_pixel_values, check_token_ids


class PaliProcessor:
    """Prompts, images and answers of a "pali" model (config: the file's checked ``pali.config``)."""

    #: How an image that is not square becomes square: "pad" (on its border colour) or "stretch".
    resize_modes = RESIZE_MODES

    def __init__(self, config: Dict[str, Any], tokenizer_bytes: bytes, resize: str = "pad"):
        """ValueError when the tokenizer does not fit the config (the caller names the file)."""
        self.config = config
        try:
            self.tokenizer = Tokenizer(tokenizer_bytes, pad_id=config["pad_token_id"], eos_id=config["eos_token_id"])
        except ValueError as error:
            raise ValueError(f"'pali.tokenizer' is not a SentencePiece model: {error}") from None
        # Ids past vocab_size would index past the embedding table.
        if self.tokenizer.vocab_size > config["vocab_size"]:
            raise ValueError(f"'pali.tokenizer' has {self.tokenizer.vocab_size} pieces, more than the config's "
                             f"vocab_size ({config['vocab_size']})")
        self.resize = resize

    def encode_prompts(self, prompts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Prompts -> (input_ids int64[B, L], attention_mask int64[B, L]): eos-terminated, right-padded."""
        limit = int(self.config["max_prompt_tokens"])
        sequences = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} must be a str, got {type(prompt).__name__}")
            try:
                ids = self.tokenizer.encode(prompt)
            except ValueError as error:
                raise ValueError(f"prompt {i}: {error}") from None
            if len(ids) > limit:
                raise ValueError(
                    f"prompt {i} is {len(ids)} tokens long (eos included); this model takes at most "
                    f"{limit} (max_prompt_tokens)"
                )
            sequences.append(ids)
        length = max(len(s) for s in sequences)
        ids = np.full((len(sequences), length), self.config["pad_token_id"], np.int64)
        mask = np.zeros((len(sequences), length), np.int64)
        for b, s in enumerate(sequences):
            ids[b, : len(s)] = s
            mask[b, : len(s)] = 1
        return ids, mask

    def pixel_values(self, images: Sequence[Any]) -> np.ndarray:
        """Images -> float32[B, C, S, S], resized and normalized as the config says."""
        c = self.config
        return np.stack([preprocess(im, c["image_size"], c["image_mean"], c["image_std"],
                                    c.get("resample", "bilinear"), self.resize) for im in images])

    def parse_objects(self, text: str, image_size: Tuple[int, int]) -> list:
        """The boxes of a detection answer in the image's pixels (``GenerationResult.objects``)."""
        from .detection import parse_detections
        from .segmentation import SegmentedObject

        width, height = image_size
        return [SegmentedObject((x0 * width, y0 * height, x1 * width, y1 * height), label, None)
                for (x0, y0, x1, y1), label in parse_detections(text, image_size, self.resize)]

    def check_logits_inputs(self, pixel_values: Any, input_ids: Any, attention_mask: Any,
                            decoder_input_ids: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The four inputs of ``logits`` as contiguous float32 / int64 arrays; ValueError (one line) when
        one is not an array of the right rank, dtype, shape or values."""
        c = self.config
        pixels = check_pixel_values(pixel_values, c["num_channels"], c["image_size"])
        batch = pixels.shape[0]
        ids = as_array(input_ids, "input_ids", 2, "iu", "integer token ids")
        limit = c["max_prompt_tokens"]
        if ids.shape[0] != batch or not 1 <= ids.shape[1] <= limit:
            raise ValueError(f"input_ids must have shape [{batch} (the batch of pixel_values), 1 to {limit} "
                             f"(max_prompt_tokens)], got {list(ids.shape)}")
        check_token_ids(ids, "input_ids", c["vocab_size"])
        mask = as_array(attention_mask, "attention_mask", 2, "biuf", "0s and 1s")
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {list(ids.shape)}, "
                             f"got {list(mask.shape)}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        decoder_ids = as_array(decoder_input_ids, "decoder_input_ids", 2, "iu", "integer token ids")
        if decoder_ids.shape[0] != batch or decoder_ids.shape[1] < 1:
            raise ValueError(f"decoder_input_ids must have shape [{batch} (the batch of pixel_values), "
                             f"length >= 1], got {list(decoder_ids.shape)}")
        check_token_ids(decoder_ids, "decoder_input_ids", c["vocab_size"])
        return (pixels, np.ascontiguousarray(ids, np.int64), np.ascontiguousarray(mask, np.int64),
                np.ascontiguousarray(decoder_ids, np.int64))
