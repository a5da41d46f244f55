"""What every backend shares: the model file's checks, prompts and images to
arrays, batching, options, and results.

A backend subclass supplies ``_search(pixel_values, input_ids, attention_mask,
options, on_token) -> (hypotheses per input, timings)``; ``generate`` and
``stream`` are built on it, so every backend takes the same inputs, options and
errors and returns the same results.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import generation, model_spec
from .errors import ModelFileError
from .generation import GenerationOptions, GenerationResult, Hypothesis
from .image import preprocess
from .tokenizer import Tokenizer

OnToken = Optional[Callable[[int, int], bool]]


def as_batch(image, prompt) -> Tuple[list, list, bool]:
    """(images, prompts, batched): a single value is broadcast against a list of the other."""
    image_list = isinstance(image, (list, tuple))
    prompt_list = isinstance(prompt, (list, tuple))
    images = list(image) if image_list else None
    prompts = list(prompt) if prompt_list else None
    if images is None and prompts is None:
        return [image], [prompt], False
    if images is None:
        images = [image] * len(prompts)
    if prompts is None:
        prompts = [prompt] * len(images)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images and {len(prompts)} prompts; give one prompt per image")
    if not images:
        raise ValueError("empty list of images and prompts")
    return images, prompts, True


class Backend:
    """A checked model file with its tokenizer; subclasses run the model."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.config, tokenizer_bytes = model_spec.check_model_file(self.path)
        try:
            self.tokenizer = Tokenizer(tokenizer_bytes, pad_id=self.config["pad_token_id"],
                                       eos_id=self.config["eos_token_id"])
        except ValueError as error:
            raise ModelFileError(f"{self.path}: 'pali.tokenizer' is not a SentencePiece model: {error}") from None

    # ---- inputs ----
    def encode_prompts(self, prompts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Prompts -> (input_ids int64[B, L], attention_mask int64[B, L]): eos-terminated, right-padded."""
        limit = int(self.config["max_prompt_tokens"])
        sequences = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} must be a str, got {type(prompt).__name__}")
            ids = self.tokenizer.encode(prompt)
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
                                    c.get("resample", "bilinear")) for im in images])

    # ---- generation ----
    def _search(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                options: GenerationOptions, on_token: OnToken) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        raise NotImplementedError

    def generate(self, image, prompt, **options):
        """Text for an image and a prompt: single in, single out; lists in, list out.

        With num_return_sequences > 1 each input gives a list of results instead of one.
        """
        start = time.perf_counter()
        opts = generation.parse_options(options, self.config)
        images, prompts, batched = as_batch(image, prompt)
        ids, mask = self.encode_prompts(prompts)
        pixels = self.pixel_values(images)
        prepared = time.perf_counter()
        hypotheses, timings = self._search(pixels, ids, mask, opts, None)
        done = time.perf_counter()
        timings = {"preprocess_ms": (prepared - start) * 1e3, **timings,
                   "generate_ms": (done - prepared) * 1e3, "total_ms": (done - start) * 1e3}
        results = []
        for per_input in hypotheses:
            rs = [GenerationResult(self.tokenizer.decode(h.tokens), list(h.tokens), float(h.score), dict(timings))
                  for h in per_input]
            results.append(rs if opts.num_return_sequences > 1 else rs[0])
        return results if batched else results[0]

    def stream(self, image, prompt, **options) -> Iterator[str]:
        """Yields pieces of text as they are generated (one image, one prompt).

        Greedy search and sampling stream token by token; beam search yields the
        final text at the end.
        """
        if isinstance(image, (list, tuple)) or isinstance(prompt, (list, tuple)):
            raise ValueError("stream takes one image and one prompt; use generate for lists")
        opts = generation.parse_options(options, self.config)
        if opts.num_return_sequences != 1:
            raise ValueError("stream returns one sequence; num_return_sequences must be 1")
        ids, mask = self.encode_prompts([prompt])
        pixels = self.pixel_values([image])
        return self._stream(pixels, ids, mask, opts)

    def _stream(self, pixels, ids, mask, opts) -> Iterator[str]:
        if opts.num_beams > 1:
            hypotheses, _ = self._search(pixels, ids, mask, opts, None)
            text = self.tokenizer.decode(hypotheses[0][0].tokens)
            if text:
                yield text
            return
        tokens: List[int] = []
        pending: List[str] = []
        shown = ""

        def on_token(request: int, token: int) -> bool:
            nonlocal shown
            tokens.append(token)
            text = self.tokenizer.decode(tokens)
            # Hold back text that ends inside a multi-byte character.
            if text.startswith(shown) and not text.endswith("\ufffd"):
                if len(text) > len(shown):
                    pending.append(text[len(shown):])
                shown = text
            return True

        for piece in self._search_streaming(pixels, ids, mask, opts, on_token, pending):
            yield piece
        text = self.tokenizer.decode(tokens)
        if text != shown and text.startswith(shown):
            yield text[len(shown):]

    def _search_streaming(self, pixels, ids, mask, opts, on_token, pending) -> Iterator[str]:
        """Runs the search in a thread and yields the pieces on_token queues as the tokens arrive."""
        pieces: "queue.Queue" = queue.Queue()
        finished = object()
        failure: list = []

        def forward_token(request: int, token: int) -> bool:
            on_token(request, token)
            while pending:
                pieces.put(pending.pop(0))
            return True

        def run():
            try:
                self._search(pixels, ids, mask, opts, forward_token)
            except BaseException as error:  # re-raised in the consuming thread
                failure.append(error)
            finally:
                pieces.put(finished)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while True:
            piece = pieces.get()
            if piece is finished:
                break
            yield piece
        worker.join()
        if failure:
            raise failure[0]


class EvalBackend:
    """``pali-engine eval --backend onnxruntime|engine``: generate(images, prompts, max_new_tokens) -> texts.

    ``model_path``: an .onnx file; None, or the default checkpoint ``pali-default.pt``,
    means the bundled default model.
    """

    def __init__(self, backend: str, model_path: Optional[str] = None, device: str = "cpu",
                 threads: Optional[int] = None, dtype: str = "float32"):
        import types

        from .engine import Engine, default_model_path

        if model_path is None or (not str(model_path).endswith(".onnx")
                                  and os.path.basename(str(model_path)) == "pali-default.pt"):
            model_path = default_model_path()
        if not str(model_path).endswith(".onnx"):
            raise ValueError(
                f"the {backend} backend runs an ONNX file, got {model_path!r}; "
                "export a checkpoint with: pali-engine export CHECKPOINT -o NAME.onnx"
            )
        self.engine = Engine.load(model_path, backend=backend, device=device, threads=threads, dtype=dtype)
        self.config = types.SimpleNamespace(**self.engine.config)

    def generate(self, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: Optional[int] = None,
                 num_beams: int = 1) -> List[str]:
        results = self.engine.generate(list(images), list(prompts), max_new_tokens=max_new_tokens,
                                       num_beams=num_beams)
        return [r.text for r in results]
