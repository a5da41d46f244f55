"""The onnxruntime reference backends: ``Engine.load(path, backend="onnxruntime")``.

Why: they are the oracles the native engine is tested against, so they are
kept obviously right rather than fast: every decoding step runs the file's
whole teacher-forced graph over everything so far (no cache) and the search
is pali_engine.generation in NumPy. ``OrtBackend`` runs "pali" files (vision
encoder, text encoder, decoder over the decoder tokens so far);
``PaliGemmaOrtBackend`` runs "paligemma" files (the graph over the padded
prompt followed by the tokens generated so far). Inputs, options and results
are those of every backend (pali_engine.backend).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import generation
from ._shutdown import native_call
from .backend import Backend, check_threads
from .errors import ModelFileError

INPUTS = ("pixel_values", "input_ids", "attention_mask", "decoder_input_ids")
PALIGEMMA_INPUTS = ("pixel_values", "input_ids", "attention_mask", "token_type_ids")
OUTPUT = "logits"


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"the onnxruntime backend needs the onnxruntime package ({error}); "
            "install it with: pip install onnxruntime", name="onnxruntime"
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


def check_dtype(dtype: str) -> None:
    if dtype != "float32":
        raise ValueError(
            f"the onnxruntime backend runs the file's float32 graph; dtype must be 'float32', got {dtype!r}"
        )


def open_session(path: str, device: str, threads: Optional[int], inputs: Sequence[str]):
    """An onnxruntime session of the file's graph, whose inputs must be ``inputs`` and outputs hold logits."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # no busy-waiting threads: the step loop alternates with NumPy, and cores may be shared
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(path, options, providers=_providers(ort, device))
    except ValueError:
        raise
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelFileError(f"{path}: onnxruntime cannot load the graph: {error}") from None
    names = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if sorted(names) != sorted(inputs) or OUTPUT not in outputs:
        raise ModelFileError(
            f"{path}: the graph has inputs {list(names)} and outputs {list(outputs)}; "
            f"expected inputs {list(inputs)} and output {OUTPUT!r}"
        )
    return session


def _run(session, feeds: Dict[str, np.ndarray]) -> np.ndarray:
    with native_call("onnxruntime"):
        (out,) = session.run([OUTPUT], feeds)
    return out


class _CountedStep:
    """A step function that counts its calls (the ``steps`` timing)."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def __call__(self, sequences: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.step(sequences)


class OrtBackend(Backend):
    """A "pali" model file run by onnxruntime, checked completely at load."""

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: Optional[int] = None,
                 dtype: str = "float32", info: Optional[Dict[str, Any]] = None):
        check_dtype(dtype)
        threads = check_threads(threads)
        super().__init__(path, info)
        self.session = open_session(self.path, device, threads, INPUTS)

    def _logits(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                decoder_input_ids: np.ndarray) -> np.ndarray:
        """The teacher-forced forward: float32[B, T, V]."""
        return _run(self.session, {
            "pixel_values": np.ascontiguousarray(pixel_values, np.float32),
            "input_ids": np.ascontiguousarray(input_ids, np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, np.int64),
            "decoder_input_ids": np.ascontiguousarray(decoder_input_ids, np.int64),
        })

    def _step_fn(self, px, ids, mask, rows: int):
        px, ids, mask = (np.repeat(a, rows, axis=0) for a in (px, ids, mask))

        def step(decoder_input_ids: np.ndarray) -> np.ndarray:
            return self._logits(px, ids, mask, decoder_input_ids)[:, -1, :]

        return step

    def _special(self) -> Dict[str, int]:
        c = self.config
        return {"start_id": int(c["decoder_start_token_id"]), "eos_id": int(c["eos_token_id"]),
                "pad_id": int(c["pad_token_id"])}

    def _search(self, pixel_values, input_ids, attention_mask, options, on_token):
        step = _CountedStep(self._step_fn(pixel_values, input_ids, attention_mask,
                                          generation.rows_per_input(options)))
        hypotheses = generation.generate(step, len(pixel_values), options, on_token=on_token, **self._special())
        return hypotheses, {"steps": step.calls}


class PaliGemmaOrtBackend(Backend):
    """A "paligemma" model file run by onnxruntime, checked completely at load.

    Decoder-only, as transformers' generate() runs it: no start token; each
    row is its padded prompt (token_type_ids 0, the bidirectional prefix)
    followed by the tokens generated so far (token_type_ids 1, causal, mask 1),
    and the logits of the last position score the next token; the logits
    processors see the whole row, the prompt's padding and image tokens
    included. The graph counts positions from the row's first column, padding
    included, where generate() skips the left padding: a shift of a whole row,
    which rotary attention does not see.
    """

    resize_modes = ("stretch",)

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: Optional[int] = None,
                 dtype: str = "float32", info: Optional[Dict[str, Any]] = None):
        check_dtype(dtype)
        threads = check_threads(threads)
        super().__init__(path, info)
        self.session = open_session(self.path, device, threads, PALIGEMMA_INPUTS)

    def _logits(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                token_type_ids: np.ndarray) -> np.ndarray:
        """The teacher-forced forward: float32[B, L, V]."""
        return _run(self.session, {
            "pixel_values": np.ascontiguousarray(pixel_values, np.float32),
            "input_ids": np.ascontiguousarray(input_ids, np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, np.int64),
            "token_type_ids": np.ascontiguousarray(token_type_ids, np.int64),
        })

    def _step_fn(self, pixel_values, prompt_mask, rows: int):
        pixel_values, prompt_mask = (np.repeat(a, rows, axis=0) for a in (pixel_values, prompt_mask))
        prompt_types = np.zeros_like(prompt_mask)

        def step(sequences: np.ndarray) -> np.ndarray:
            # The generated tokens: attended (mask 1), and causal like a suffix (token type 1).
            suffix_ones = np.ones((len(sequences), sequences.shape[1] - prompt_mask.shape[1]), np.int64)
            mask = np.concatenate([prompt_mask, suffix_ones], axis=1)
            types = np.concatenate([prompt_types, suffix_ones], axis=1)
            return self._logits(pixel_values, sequences, mask, types)[:, -1, :]

        return step

    def _search(self, pixel_values, input_ids, attention_mask, options, on_token):
        step = _CountedStep(self._step_fn(pixel_values, attention_mask, generation.rows_per_input(options)))
        hypotheses = generation.generate(step, len(pixel_values), options, on_token=on_token,
                                         eos_id=self.processor.eos_id, pad_id=self.processor.pad_id,
                                         initial_sequences=input_ids)
        return hypotheses, {"steps": step.calls}
