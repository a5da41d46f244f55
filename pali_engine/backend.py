"""What every backend shares: the model file's checks, prompts and images to
arrays, batching, options, and results.

The prompts, images and answers are the architecture's processor's
(``processors.processor_for``). A backend subclass supplies ``_logits`` and
``_search(pixel_values, input_ids, attention_mask, options, on_token) ->
(hypotheses per input, timings)``; ``generate`` and
``stream`` are built on it, so every backend takes the same inputs, options and
errors and returns the same results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import generation, model_spec
from .errors import ModelFileError, short_repr
from .generation import GenerationOptions, GenerationResult, Hypothesis
from .image import RESIZE_MODES
from .processors import processor_for

OnToken = Optional[Callable[[int, int], bool]]

#: The most threads a backend takes (far above any machine; the native engine holds a C int).
MAX_THREADS = 4096


def check_threads(threads: Any) -> Optional[int]:
    """``threads`` as an int in [1, MAX_THREADS], or None (all cores); ValueError otherwise."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer between 1 and {MAX_THREADS}, or None for all cores, "
                         f"got {short_repr(threads)}")
    return int(threads)


#: The native scheduler's limits when Engine.load does not set them: rows stepped together, requests waiting.
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_QUEUE = 1024


def check_scheduling(max_batch: Any, max_queue: Any) -> Dict[str, int]:
    """The native scheduler's limits as load_model takes them; ValueError for a bad one.

    ``max_batch``: the rows (prompts times beams or samples) stepped together, >= 1;
    ``max_queue``: the requests that may wait for a place, >= 0. None: the default.
    """
    limits = {}
    for name, value, low, default in (("max_batch", max_batch, 1, DEFAULT_MAX_BATCH),
                                      ("max_queue", max_queue, 0, DEFAULT_MAX_QUEUE)):
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= 1 << 30:
            raise ValueError(f"{name} must be an integer between {low} and {1 << 30}, got {short_repr(value)}")
        limits[name] = int(value)
    return limits


def image_size(image) -> Optional[Tuple[int, int]]:
    """(width, height) of an accepted image (a path's header is read again), or None."""
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return int(image.shape[1]), int(image.shape[0])
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        try:
            with Image.open(os.fspath(image)) as picture:
                return picture.size
        except OSError:
            return None
    size = getattr(image, "size", None)
    return tuple(size) if isinstance(size, tuple) and len(size) == 2 else None


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


@dataclasses.dataclass
class PreparedRequest:
    """A generate() call with its inputs made (``Backend.prepare``): what the model takes, and what
    ``Backend.results`` needs to build the answer."""

    options: GenerationOptions
    images: list
    batched: bool
    pixels: np.ndarray
    ids: np.ndarray
    mask: np.ndarray
    start: float
    prepared: float


class Backend:
    """A checked model file with its architecture's processor; subclasses run the model."""

    #: The resize modes the architecture's models take (Engine.load checks ``resize`` against them).
    resize_modes = RESIZE_MODES

    def __init__(self, path: str | os.PathLike, info: Optional[Dict[str, Any]] = None):
        """``info``: the file as ``pali_engine.inspect`` describes it, when the caller has read it."""
        self.path = os.fspath(path)
        self.config, tokenizer_bytes = model_spec.check_model_file(self.path, info)
        try:
            self.processor = processor_for(self.config, tokenizer_bytes)
        except ValueError as error:
            raise ModelFileError(f"{self.path}: {error}") from None
        self.tokenizer = self.processor.tokenizer

    @property
    def resize(self) -> str:
        """How an image that is not square becomes square ("pad" or "stretch"; Engine.load(resize=...))."""
        return self.processor.resize

    @resize.setter
    def resize(self, mode: str) -> None:
        self.processor.resize = mode

    # ---- inputs (the processor's) ----
    def check_logits_inputs(self, *inputs: Any) -> Tuple[np.ndarray, ...]:
        """The inputs of ``logits`` as contiguous float32 / int64 arrays; ValueError (one line) when
        one is not an array of the right rank, dtype, shape or values."""
        return self.processor.check_logits_inputs(*inputs)

    def logits(self, pixel_values: Any, input_ids: Any, attention_mask: Any, fourth: Any) -> np.ndarray:
        """The teacher-forced forward, float32[B, T, V], on checked inputs: the fourth is
        decoder_input_ids ("pali") or token_type_ids ("paligemma")."""
        return self._logits(*self.check_logits_inputs(pixel_values, input_ids, attention_mask, fourth))

    def _logits(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                fourth: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_prompts(self, prompts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Prompts -> (input_ids int64[B, L], attention_mask int64[B, L]) as the architecture lays them out."""
        return self.processor.encode_prompts(prompts)

    def pixel_values(self, images: Sequence[Any]) -> np.ndarray:
        """Images -> float32[B, C, S, S] as the architecture's preprocessing makes them."""
        return self.processor.pixel_values(images)

    def parse_objects(self, text: str, image_size: Tuple[int, int]) -> list:
        """The objects of a detection or segmentation answer, in the image's pixels."""
        return self.processor.parse_objects(text, image_size)

    def scheduler_stats(self) -> Optional[Dict[str, int]]:
        """The native scheduler's state (requests running and waiting, rows, steps, limits); None without one."""
        return None

    # ---- generation ----
    def _search(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                options: GenerationOptions, on_token: OnToken) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        raise NotImplementedError

    def generate(self, image, prompt, **options):
        """Text for an image and a prompt: single in, single out; lists in, list out.

        With num_return_sequences > 1 each input gives a list of results instead of one.
        """
        request = self.prepare(image, prompt, options)
        hypotheses, timings = self._search(request.pixels, request.ids, request.mask, request.options, None)
        return self.results(request, hypotheses, timings)

    def prepare(self, image, prompt, options: Dict[str, Any]) -> "PreparedRequest":
        """A generate() call up to the model: options parsed, prompts encoded, images preprocessed."""
        start = time.perf_counter()
        opts = generation.parse_options(options, self.config)
        images, prompts, batched = as_batch(image, prompt)
        ids, mask = self.encode_prompts(prompts)
        pixels = self.pixel_values(images)
        return PreparedRequest(opts, images, batched, pixels, ids, mask, start, time.perf_counter())

    def results(self, request: "PreparedRequest", hypotheses: List[List[Hypothesis]],
                timings: Dict[str, float]):
        """What generate() returns for a prepared request and the model's hypotheses."""
        done = time.perf_counter()
        timings = {"preprocess_ms": (request.prepared - request.start) * 1e3, **timings,
                   "generate_ms": (done - request.prepared) * 1e3, "total_ms": (done - request.start) * 1e3}
        results = []
        for image_of, per_input in zip(request.images, hypotheses):
            # A path's size is read only if the result's objects are asked for (a file open per request).
            path = os.fspath(image_of) if isinstance(image_of, (str, os.PathLike)) else None
            size = None if path is not None else image_size(image_of)
            rs = [GenerationResult(self.tokenizer.decode(h.tokens), list(h.tokens), float(h.score), dict(timings),
                                   size, self.parse_objects, path) for h in per_input]
            results.append(rs if request.options.num_return_sequences > 1 else rs[0])
        return results if request.batched else results[0]

    #: Whether ``submit`` queues calls on a native scheduler (else it raises NotImplementedError).
    can_submit = False

    def submit(self, request: "PreparedRequest", stream: bool = False):
        """A prepared request for the native scheduler, for an event loop to wait on: a
        ``PendingRequest`` (``start()`` queues it; ``fileno()``, ``poll()``, ``result()``, ``cancel()``).
        Watch ``fileno()`` before ``start()``: the scheduler computes at once, and the caller's own
        work after it would take a core from the scheduler's threads."""
        raise NotImplementedError(f"{type(self).__name__} has no scheduler to submit to")

    def hypotheses(self, pending) -> Tuple[List[List[Hypothesis]], Dict[str, float]]:
        """(hypotheses per input, timings) of a submitted request that has ended; raises its error."""
        raise NotImplementedError(f"{type(self).__name__} has no scheduler to submit to")

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

        with contextlib.closing(self._search_streaming(pixels, ids, mask, opts, on_token, pending)) as pieces:
            for piece in pieces:
                yield piece
        text = self.tokenizer.decode(tokens)
        if text != shown and text.startswith(shown):
            yield text[len(shown):]

    def _search_streaming(self, pixels, ids, mask, opts, on_token, pending) -> Iterator[str]:
        """Runs the search in a thread and yields the pieces on_token queues as the tokens arrive."""
        pieces: "queue.Queue" = queue.Queue()
        finished = object()
        failure: list = []
        # Set when the consumer stops early (breaks out, or drops the iterator):
        # the search then stops at its next token instead of running to the end.
        cancelled = threading.Event()

        def forward_token(request: int, token: int) -> bool:
            if cancelled.is_set():
                return False
            on_token(request, token)
            while pending:
                pieces.put(pending.pop(0))
            return not cancelled.is_set()

        def run():
            try:
                self._search(pixels, ids, mask, opts, forward_token)
            except BaseException as error:  # re-raised in the consuming thread
                failure.append(error)
            finally:
                pieces.put(finished)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while True:
                piece = pieces.get()
                if piece is finished:
                    break
                yield piece
        finally:
            cancelled.set()
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
