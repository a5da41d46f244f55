"""The onnxruntime reference backend: ``Engine.load(path, backend="onnxruntime")``.

Why: it is the oracle the native engine is tested against, so it is kept
obviously right rather than fast: every decoding step runs the file's whole
teacher-forced graph (vision encoder, text encoder, decoder over all tokens so
far; no cache) and the search is pali_engine.generation in NumPy.  Images go
through pali_engine.image.preprocess, text through the SentencePiece model
stored in the file's metadata.

Also ``EvalBackend``: the interface of ``pali-engine eval`` (export/evaluate.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import generation, model_spec
from .errors import ModelFileError
from .generation import GenerationResult
from .image import preprocess
from .tokenizer import Tokenizer

INPUTS = ("pixel_values", "input_ids", "attention_mask", "decoder_input_ids")
OUTPUT = "logits"


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"the onnxruntime backend needs the onnxruntime package ({error}); "
            "install it with: pip install 'pali-engine[ort]'"
        ) from None
    return onnxruntime


def _providers(ort, device: str) -> List[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("device='cuda': this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def _as_batch(image, prompt) -> Tuple[list, list, bool]:
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


class OrtBackend:
    """A pali-engine model file run by onnxruntime, checked completely at load."""

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: Optional[int] = None,
                 dtype: str = "float32"):
        self.path = os.fspath(path)
        if dtype != "float32":
            raise ValueError(
                f"the onnxruntime backend runs the file's float32 graph; dtype must be 'float32', got {dtype!r}"
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.config, tok_bytes = model_spec.check_model_file(self.path)
        try:
            self.tokenizer = Tokenizer(tok_bytes, pad_id=self.config["pad_token_id"],
                                       eos_id=self.config["eos_token_id"])
        except ValueError as error:
            raise ModelFileError(f"{self.path}: 'pali.tokenizer' is not a SentencePiece model: {error}") from None
        self._pieces = self.tokenizer.vocab_size
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # no busy-waiting threads: the step loop alternates with NumPy, and cores may be shared
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(self.path, options, providers=_providers(ort, device))
        except ValueError:
            raise
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelFileError(f"{self.path}: onnxruntime cannot load the graph: {error}") from None
        names = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if sorted(names) != sorted(INPUTS) or OUTPUT not in outputs:
            raise ModelFileError(
                f"{self.path}: the graph has inputs {list(names)} and outputs {list(outputs)}; "
                f"expected inputs {list(INPUTS)} and output {OUTPUT!r}"
            )

    # ---- inputs ----
    def encode_prompts(self, prompts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Prompts -> (input_ids int64[B, L], attention_mask int64[B, L]): eos-terminated, right-padded."""
        limit = int(self.config["max_prompt_tokens"])
        seqs = []
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} must be a str, got {type(prompt).__name__}")
            ids = self.tokenizer.encode(prompt)
            if len(ids) > limit:
                raise ValueError(
                    f"prompt {i} is {len(ids)} tokens long (eos included); this model takes at most "
                    f"{limit} (max_prompt_tokens)"
                )
            seqs.append(ids)
        L = max(len(s) for s in seqs)
        ids = np.full((len(seqs), L), self.config["pad_token_id"], np.int64)
        mask = np.zeros((len(seqs), L), np.int64)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = s
            mask[b, : len(s)] = 1
        return ids, mask

    def pixel_values(self, images: Sequence[Any]) -> np.ndarray:
        c = self.config
        return np.stack([preprocess(im, c["image_size"], c["image_mean"], c["image_std"],
                                    c.get("resample", "bilinear")) for im in images])

    def logits(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
               decoder_input_ids: np.ndarray) -> np.ndarray:
        """The teacher-forced forward: float32[B, T, V]."""
        (out,) = self.session.run([OUTPUT], {
            "pixel_values": np.ascontiguousarray(pixel_values, np.float32),
            "input_ids": np.ascontiguousarray(input_ids, np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, np.int64),
            "decoder_input_ids": np.ascontiguousarray(decoder_input_ids, np.int64),
        })
        return out

    def _step_fn(self, px, ids, mask, rows: int):
        px, ids, mask = (np.repeat(a, rows, axis=0) for a in (px, ids, mask))

        def step(decoder_input_ids: np.ndarray) -> np.ndarray:
            return self.logits(px, ids, mask, decoder_input_ids)[:, -1, :]

        return step

    def decode(self, tokens: Sequence[int]) -> str:
        """Token ids -> text; ids the tokenizer lacks (a vocab padded beyond it) are skipped."""
        return self.tokenizer.decode([t for t in tokens if 0 <= t < self._pieces])

    def _special(self) -> Dict[str, int]:
        c = self.config
        return {"start_id": int(c["decoder_start_token_id"]), "eos_id": int(c["eos_token_id"]),
                "pad_id": int(c["pad_token_id"])}

    # ---- generation ----
    def generate(self, image, prompt, **options):
        """Engine.generate: single in, single out; lists in, list out.

        With num_return_sequences > 1 each input gives a list of results instead of one.
        """
        t0 = time.perf_counter()
        opts = generation.parse_options(options, self.config)
        images, prompts, batched = _as_batch(image, prompt)
        ids, mask = self.encode_prompts(prompts)
        px = self.pixel_values(images)
        t1 = time.perf_counter()
        rows = generation.rows_per_input(opts)
        steps = [0]
        step = self._step_fn(px, ids, mask, rows)

        def counted(dec):
            steps[0] += 1
            return step(dec)

        hyps = generation.generate(counted, len(images), opts, **self._special())
        t2 = time.perf_counter()
        timings = {"preprocess_ms": (t1 - t0) * 1e3, "generate_ms": (t2 - t1) * 1e3,
                   "total_ms": (t2 - t0) * 1e3, "steps": steps[0]}
        results = []
        for per_input in hyps:
            rs = [GenerationResult(self.decode(h.tokens), list(h.tokens), float(h.score), dict(timings))
                  for h in per_input]
            results.append(rs if opts.num_return_sequences > 1 else rs[0])
        return results if batched else results[0]

    def stream(self, image, prompt, **options) -> Iterator[str]:
        """Engine.stream: yields pieces of text as they are generated (one image, one prompt).

        Greedy and sampling stream token by token; beam search yields the final text at the end.
        """
        if isinstance(image, (list, tuple)) or isinstance(prompt, (list, tuple)):
            raise ValueError("stream takes one image and one prompt; use generate for lists")
        opts = generation.parse_options(options, self.config)
        if opts.num_return_sequences != 1:
            raise ValueError("stream returns one sequence; num_return_sequences must be 1")
        return self._stream(image, prompt, opts)

    def _stream(self, image, prompt, opts) -> Iterator[str]:
        if opts.num_beams > 1:
            result = self.generate(image, prompt, **dataclasses.asdict(opts))
            if result.text:
                yield result.text
            return
        ids, mask = self.encode_prompts([prompt])
        px = self.pixel_values([image])
        step = self._step_fn(px, ids, mask, 1)
        tokens: List[int] = []
        shown = ""
        for nxt, finished, _ in generation.iter_greedy(step, 1, opts, **self._special()):
            if int(nxt[0]) != self.config["eos_token_id"]:
                tokens.append(int(nxt[0]))
            text = self.decode(tokens)
            if text.startswith(shown) and not text.endswith("\ufffd"):
                piece, shown = text[len(shown):], text
                if piece:
                    yield piece
            if finished[0]:
                break
        text = self.decode(tokens)
        if text != shown and text.startswith(shown):
            yield text[len(shown):]


class EvalBackend:
    """``pali-engine eval --backend onnxruntime``: generate(images, prompts, max_new_tokens) -> list[str].

    ``model_path``: an .onnx file; None, or the default checkpoint path ending in
    ``pali-default.pt``, means the bundled default model.
    """

    def __init__(self, model_path: Optional[str] = None, device: str = "cpu", threads: Optional[int] = None):
        from .engine import default_model_path

        if model_path is None or (not str(model_path).endswith(".onnx")
                                  and os.path.basename(str(model_path)) == "pali-default.pt"):
            model_path = default_model_path()
        if not str(model_path).endswith(".onnx"):
            raise ValueError(
                f"the onnxruntime backend runs an ONNX file, got {model_path!r}; "
                "export a checkpoint with: pali-engine export CHECKPOINT -o NAME.onnx"
            )
        self.backend = OrtBackend(model_path, device=device, threads=threads)
        self.config = types.SimpleNamespace(**self.backend.config)
        self.tokenizer = self.backend.tokenizer

    def generate(self, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: Optional[int] = None,
                 num_beams: int = 1) -> List[str]:
        results = self.backend.generate(list(images), list(prompts), max_new_tokens=max_new_tokens,
                                        num_beams=num_beams)
        return [r.text for r in results]
