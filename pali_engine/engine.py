"""The user-facing Engine: load a PaLI model file and generate text from images and prompts.

    engine = Engine.load()                     # the bundled model; or Engine.load("model.onnx")
    out = engine.generate("examples/shapes.png", "caption en")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ModelFileError

_DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "pali-default.onnx"


def default_model_path() -> str:
    """Path of the bundled default model; FileNotFoundError when this build has none."""
    if not _DEFAULT_MODEL.is_file():
        raise FileNotFoundError(
            "this build of pali-engine has no bundled default model "
            f"(expected {_DEFAULT_MODEL.name} inside the package); pass a model path instead"
        )
    return str(_DEFAULT_MODEL)


class Engine:
    """A loaded model. Create it with ``Engine.load``."""

    def __init__(self, path: str, config: dict[str, Any], backend: str, device: str, dtype: str):
        self._backend = None
        self.path = path
        self.config = config
        self.backend = backend
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        *,
        backend: str = "native",
        device: str = "cpu",
        dtype: str | None = None,
        threads: int | None = None,
        resize: str | None = None,
        max_batch: int | None = None,
        max_queue: int | None = None,
    ) -> "Engine":
        """Opens a model file (the bundled default model when ``path`` is None).

        ``dtype`` (native backend): how the weights are stored and multiplied
        (``pali_engine.dtypes``; None: the file's own when it is quantized, as
        ``pali-engine convert --dtype int8|int4`` writes it, else float32).
        ``float32``; ``float16`` (weights rounded to half, float32 arithmetic);
        ``int8`` (weights per output channel, and every linear layer's input per
        row at run time, multiplied in integers: the fastest, with AVX-512 VNNI
        where the CPU has it; held-out scores of the bundled model within one
        point of float32). ``threads``: None for all cores.

        The native backend runs every call on the model's scheduler: calls from
        any number of threads (or asyncio tasks, or the HTTP server) are batched
        together, a new call joining between two decode steps of those already
        running. ``max_batch`` (default 64): the rows (prompts times beams or
        samples) stepped together; ``max_queue`` (default 1024): the calls that
        may wait for a place, past which a call raises
        ``pali_engine.errors.EngineBusy`` at once.

        ``resize``: how an image that is not square becomes the model's square
        input: ``"pad"`` (centred on its border colour; the default of "pali"
        models, whose training images are square scenes) or ``"stretch"`` (the
        only choice, and the default, of "paligemma" models, trained on
        stretched images as transformers' processor makes them).

        The file's architecture and ``backend`` pick the backend class
        (``pali_engine.backends``): "pali" (the bundled kind) or "paligemma"
        (PaliGemma 1 and 2 converted with ``pali-engine convert``), each with
        "native" (the engine's own kernels) or "onnxruntime" (the file's graph:
        the reference, float32, slow).

        Raises ModelFileError when the file is missing, broken or not a pali-engine model.
        """
        from . import backends
        from .image import RESIZE_MODES
        from .model_file import inspect

        if path is None:
            path = default_model_path()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelFileError(f"{path}: no such model file")
        if resize is not None and resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        # Read once: the architecture is picked from it and the backend checks it.
        info = inspect(path)
        if dtype is None:
            from .dtypes import default_dtype

            dtype = default_dtype(info["metadata"].get("pali.weights_dtype")) if backend == "native" else "float32"
        architecture = backends.file_architecture(path, info["metadata"])
        backend_class = backends.backend_class(architecture, backend)
        if resize is not None and resize not in backend_class.resize_modes:
            raise ValueError(f"a {architecture!r} model takes resize="
                             f"{' or '.join(map(repr, backend_class.resize_modes))}, as it was trained; "
                             f"got {resize!r}")
        scheduling = {name: value for name, value in (("max_batch", max_batch), ("max_queue", max_queue))
                      if value is not None}
        if scheduling and backend != "native":
            raise ValueError(f"max_batch and max_queue set the native backend's scheduler; "
                             f"backend {backend!r} has none")
        impl = backend_class(path, device=device, threads=threads, dtype=dtype, info=info, **scheduling)
        if resize is not None:
            impl.resize = resize
        engine = cls(path, impl.config, backend, device, dtype)
        engine._backend = impl
        return engine

    @property
    def tokenizer(self):
        """The model's own tokenizer (from the file): ``encode(text)`` -> ids ending in eos,
        ``decode(ids)`` -> text."""
        return self._backend.tokenizer

    def generate(self, image, prompt, **options):
        """Text for an image and a prompt: single in, single out; lists in, list out.

        ``image``: a path, a PIL image or a uint8 array (H, W, 3) (grayscale and RGBA
        are converted). Options are those of transformers' generate(): max_new_tokens,
        min_new_tokens, num_beams, length_penalty, early_stopping, num_return_sequences,
        no_repeat_ngram_size, repetition_penalty, do_sample, temperature, top_k, top_p,
        seed. Returns results with ``.text``, ``.tokens``, ``.score`` and ``.timings``
        (a list of them per input when num_return_sequences > 1).
        """
        return self._backend.generate(image, prompt, **options)

    def stream(self, image, prompt, **options):
        """Yields the generated text piece by piece (one image, one prompt)."""
        return self._backend.stream(image, prompt, **options)

    async def agenerate(self, image, prompt, *, executor=None, **options):
        """``generate`` awaited from asyncio (``pali_engine.aio``): on the native backends queued on
        the engine's scheduler with no thread waiting for it (large images and paths are prepared in
        ``executor``, default: the loop's); on the others run in ``executor``."""
        from .aio import agenerate

        return await agenerate(self, image, prompt, executor=executor, **options)

    def astream(self, image, prompt, *, executor=None, **options):
        """``stream`` as an async iterator of pieces (``pali_engine.aio.AsyncTextStream``); leaving
        it early stops the generation."""
        from .aio import astream

        return astream(self, image, prompt, executor=executor, **options)

    def scheduler_stats(self):
        """The native scheduler now: ``active_requests``, ``queued_requests``, ``active_rows`` (rows
        stepped together), ``steps`` (decode steps so far), ``max_batch``, ``max_queue``; None for
        the onnxruntime backend."""
        return self._backend.scheduler_stats()

    def logits(self, pixel_values, input_ids, attention_mask, decoder_input_ids):
        """The teacher-forced forward, float32[B, T, V]: the ONNX graph's output.

        For a "paligemma" model the fourth input is ``token_type_ids`` (0 for
        the prefix, 1 for the suffix) and the logits cover the whole sequence.
        """
        return self._backend.logits(pixel_values, input_ids, attention_mask, decoder_input_ids)

    def __repr__(self) -> str:
        return f"Engine({self.path!r}, backend={self.backend!r}, device={self.device!r}, dtype={self.dtype!r})"
