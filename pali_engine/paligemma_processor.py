"""Prompts and images for "paligemma" models, exactly as transformers' PaliGemmaProcessor makes them.

Why: a converted PaliGemma file reproduces transformers' logits only for the
same inputs, token for token and pixel for pixel, so the runtime (numpy,
sentencepiece and pillow only; no torch, no transformers) builds them the same
way:

* ids: ``<image>`` x num_image_tokens, ``<bos>``, the prompt and ``\\n``
  (token_type_ids 0: the prefix, attended bidirectionally), then, when a
  suffix is given, the suffix and ``<eos>`` (token_type_ids 1: causal). Text is
  split on the special and ``<locNNNN>``/``<segNNN>`` tokens the way the
  Hugging Face tokenizer splits on its added tokens; the pieces in between are
  SentencePiece-encoded as they are (Gemma's tokenizer adds no dummy prefix).
  A batch is padded on the left with ``<pad>`` (GemmaTokenizer's side), mask 0.
* pixels: SiglipImageProcessor's PIL path: RGB (transparency composited on
  white), PIL resize to S x S with the config's filter, ``x * rescale_factor``
  in float64 then float32, ``(x - mean) / std`` in float32, channels first.

It is also the architecture's processor inside the engine
(``processors.processor_for``): ``for_engine`` makes one from a checked file
config, and ``encode_prompts``, ``pixel_values``, ``parse_objects`` and
``check_logits_inputs`` are what every "paligemma" backend feeds and reads.
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import sentencepiece as spm
from PIL import Image

from ._shutdown import native_call

IMAGE_TOKEN = "<image>"
#: The added tokens the Hugging Face tokenizer matches in text before SentencePiece runs.
_SPECIAL_PATTERN = re.compile(r"<image>|<bos>|<eos>|<pad>|<unk>|<mask>|<loc\d{4}>|<seg\d{3}>")

_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
             "lanczos": Image.LANCZOS}

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


def _to_rgb(image: ImageInput) -> np.ndarray:
    """uint8 [H, W, 3], as transformers' convert_to_rgb (transparency on white)."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(os.fspath(image)) as opened:
            opened.load()
            image = opened.copy()
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.array(Image.alpha_composite(background, rgba).convert("RGB"))
        return np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 [H, W, C], got {image.dtype}")
        a = image[:, :, None] if image.ndim == 2 else image
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise ValueError(f"image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {list(image.shape)}")
        if a.shape[2] == 1:
            return np.repeat(a, 3, axis=2)
        if a.shape[2] == 4:
            alpha = a[..., 3:4] / 255
            return np.round(alpha * a[..., :3] + (1 - alpha) * 255).astype(np.uint8)
        return a
    raise ValueError(f"an image must be a path, a PIL image or a uint8 array, got {type(image).__name__}")


class PaliGemmaProcessor:
    """Builds ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``pixel_values`` for a paligemma model."""

    def __init__(self, tokenizer: Union[bytes, str, os.PathLike], *, image_token_index: int, num_image_tokens: int,
                 image_size: int, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), resample: str = "bicubic",
                 rescale_factor: float = 1 / 255, padding_side: str = "left"):
        if not isinstance(tokenizer, (bytes, bytearray)):
            with open(os.fspath(tokenizer), "rb") as f:
                tokenizer = f.read()
        self.sp = spm.SentencePieceProcessor()
        with native_call("sentencepiece"):
            try:
                self.sp.LoadFromSerializedProto(bytes(tokenizer))
            except Exception as error:  # sentencepiece raises RuntimeError or OSError
                raise ValueError(f"not a SentencePiece model: {error}") from None
            special_ids = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.image_token_index = int(image_token_index)
        self.num_image_tokens = int(num_image_tokens)
        self.image_size = int(image_size)
        self.image_mean = np.array(image_mean, dtype=np.float32)
        self.image_std = np.array(image_std, dtype=np.float32)
        self.resample = resample
        self.rescale_factor = float(rescale_factor)
        self.padding_side = padding_side
        self.bos_id, self.eos_id, self.pad_id = special_ids

    @classmethod
    def from_config(cls, config: Dict[str, Any], tokenizer: bytes, **kwargs) -> "PaliGemmaProcessor":
        """From a converted file's ``pali.config`` (a dict) and ``pali.tokenizer`` (bytes)."""
        return cls(tokenizer, image_token_index=config["image_token_index"],
                   num_image_tokens=config["num_image_tokens"], image_size=config["image_size"],
                   image_mean=config["image_mean"], image_std=config["image_std"], resample=config["resample"],
                   rescale_factor=config["rescale_factor"], **kwargs)

    @classmethod
    def from_model_file(cls, path: Union[str, os.PathLike], **kwargs) -> "PaliGemmaProcessor":
        """From a converted ``.onnx`` file's metadata (read with the engine's own reader)."""
        from .model_file import inspect

        metadata = inspect(path)["metadata"]
        config = json.loads(metadata["pali.config"])
        if config.get("architecture") != "paligemma":
            raise ValueError(f"{os.fspath(path)}: architecture {config.get('architecture')!r} is not 'paligemma'")
        return cls.from_config(config, base64.b64decode(metadata["pali.tokenizer"]), **kwargs)

    # ---------------------------------------------------------------- text

    def _special_id(self, token: str) -> Optional[int]:
        if token == IMAGE_TOKEN:
            return self.image_token_index
        piece = self.sp.piece_to_id(token)
        return None if piece == self.sp.unk_id() and token != "<unk>" else piece

    def tokenize(self, text: str) -> List[int]:
        """Text -> ids: special tokens by id, the text between them SentencePiece-encoded as is."""
        with native_call("sentencepiece"):
            return self._tokenize(text)

    def _tokenize(self, text: str) -> List[int]:
        ids: List[int] = []
        start = 0
        for match in _SPECIAL_PATTERN.finditer(text):
            special = self._special_id(match.group())
            if special is None:  # not a token of this vocabulary: plain text
                continue
            if match.start() > start:
                ids += self.sp.encode(text[start:match.start()])
            ids.append(special)
            start = match.end()
        if start < len(text):
            ids += self.sp.encode(text[start:])
        return ids

    def encode(self, prompt: str, suffix: Optional[str] = None) -> Tuple[List[int], List[int]]:
        """(ids, token_type_ids) of one prompt (and suffix), unpadded."""
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
        if prompt.startswith(IMAGE_TOKEN):  # the prompt already names its image, as transformers allows
            prompt = prompt[len(IMAGE_TOKEN):]
        if IMAGE_TOKEN in prompt:
            raise ValueError("a prompt may hold one <image> token, at its start (one image per prompt)")
        prefix = [self.image_token_index] * self.num_image_tokens + [self.bos_id] + self.tokenize(prompt + "\n")
        if suffix is None:
            return prefix, [0] * len(prefix)
        tail = self.tokenize(suffix + "<eos>")
        return prefix + tail, [0] * len(prefix) + [1] * len(tail)

    # ---------------------------------------------------------------- images

    def preprocess_image(self, image: ImageInput) -> np.ndarray:
        """One image -> float32 [3, S, S]."""
        rgb = _to_rgb(image)
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ValueError(f"empty image (size {rgb.shape[1]}x{rgb.shape[0]})")
        S = self.image_size
        resized = np.array(Image.fromarray(rgb).resize((S, S), resample=_RESAMPLE[self.resample]))
        x = np.moveaxis(resized, -1, 0)
        x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        return (x - self.image_mean[:, None, None]) / self.image_std[:, None, None]

    # ---------------------------------------------------------------- batch

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]], prompts: Union[str, Sequence[str]],
                 suffixes: Union[None, str, Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """One image per prompt -> {"input_ids", "attention_mask", "token_type_ids": int64 [B, L],
        "pixel_values": float32 [B, 3, S, S]}."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts: give one image per prompt")
        if suffixes is not None:
            suffixes = [suffixes] if isinstance(suffixes, str) else list(suffixes)
            if len(suffixes) != len(prompts):
                raise ValueError(f"{len(suffixes)} suffixes for {len(prompts)} prompts")
        text = self.encode_batch(prompts, suffixes)
        text["pixel_values"] = np.stack([self.preprocess_image(image) for image in images])
        return text

    def encode_batch(self, prompts: Sequence[str],
                     suffixes: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Prompts (and suffixes) -> {"input_ids", "attention_mask", "token_type_ids": int64 [B, L]},
        padded with ``<pad>`` on ``padding_side`` to the longest row."""
        if not prompts:
            raise ValueError("no prompts")
        rows = [self.encode(p, None if suffixes is None else suffixes[i]) for i, p in enumerate(prompts)]
        length = max(len(ids) for ids, _ in rows)
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        token_type_ids = np.zeros((len(rows), length), dtype=np.int64)
        for b, (ids, types) in enumerate(rows):
            span = slice(length - len(ids), length) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[b, span] = ids
            attention_mask[b, span] = 1
            token_type_ids[b, span] = types
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    # ---------------------------------------------------------------- the engine's side

    #: PaliGemma's processor stretches every image to the square input, as the models were trained.
    resize_modes = ("stretch",)
    resize = "stretch"

    @classmethod
    def for_engine(cls, config: Dict[str, Any], tokenizer: bytes) -> "PaliGemmaProcessor":
        """The processor of a checked "paligemma" file config: left padding, since generation
        continues every row after its last column. ValueError when the tokenizer is unusable."""
        from .tokenizer import Tokenizer

        try:
            processor = cls.from_config(config, tokenizer, padding_side="left")
            processor.tokenizer = Tokenizer(tokenizer, pad_id=processor.pad_id, eos_id=processor.eos_id)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"the tokenizer or image settings are unusable: {error}") from None
        processor.config = config
        return processor

    def encode_prompts(self, prompts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Prompts -> (input_ids, attention_mask) int64[B, L], left-padded, without a suffix."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} must be a str, got {type(prompt).__name__}")
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"prompt {i} is not valid Unicode (a lone surrogate at index {error.start})") from None
        batch = self.encode_batch(prompts)
        return batch["input_ids"], batch["attention_mask"]

    def pixel_values(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> float32[B, 3, S, S] exactly as SiglipImageProcessor makes them."""
        return np.stack([self.preprocess_image(image) for image in images])

    def parse_objects(self, text: str, image_size: Tuple[int, int]) -> list:
        """The objects of a detection or segmentation answer (boxes in the image's pixels, mask codes)."""
        from .segmentation import parse_segmentation

        return parse_segmentation(text, image_size)

    def check_logits_inputs(self, pixel_values: Any, input_ids: Any, attention_mask: Any,
                            token_type_ids: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The four inputs of ``logits`` as contiguous float32 / int64 arrays; ValueError (one line) when
        one is not an array of the right rank, dtype, shape or values."""
        from .validation import as_array, check_pixel_values, check_token_ids

        c, v = self.config, self.config["vision_config"]
        pixels = check_pixel_values(pixel_values, v["num_channels"], v["image_size"])
        batch = pixels.shape[0]
        ids = as_array(input_ids, "input_ids", 2, "iu", "integer token ids")
        if ids.shape[0] != batch or ids.shape[1] < 1:
            raise ValueError(f"input_ids must have shape [{batch} (the batch of pixel_values), length >= 1], "
                             f"got {list(ids.shape)}")
        image = ids == c["image_token_index"]
        # The image token may lie past the text vocabulary (the graph and the native model map it).
        check_token_ids(np.where(image, 0, ids), "input_ids", c["text_config"]["vocab_size"])
        images_per_row = image.sum(axis=1)
        if images_per_row.max() > c["num_image_tokens"]:
            row = int(np.argmax(images_per_row))
            raise ValueError(f"input_ids row {row} has {int(images_per_row[row])} <image> tokens, more than the "
                             f"{c['num_image_tokens']} image features")
        masks = []
        for name, value, meaning in (("attention_mask", attention_mask, "0 (padding) and 1 (token)"),
                                     ("token_type_ids", token_type_ids, "0 (prefix) and 1 (suffix)")):
            array = as_array(value, name, 2, "biuf", "0s and 1s")
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
