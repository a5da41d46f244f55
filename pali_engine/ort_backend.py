"""The onnxruntime reference backend: ``Engine.load(path, backend="onnxruntime")``.

Why: it is the oracle the native engine is tested against, so it is kept
obviously right rather than fast: every decoding step runs the file's whole
teacher-forced graph (vision encoder, text encoder, decoder over all tokens so
far; no cache) and the search is pali_engine.generation in NumPy. Inputs,
options and results are those of every backend (pali_engine.backend).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from . import generation
from ._shutdown import native_call
from .backend import Backend, check_threads
from .errors import ModelFileError

INPUTS = ("pixel_values", "input_ids", "attention_mask", "decoder_input_ids")
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


class OrtBackend(Backend):
    """A pali-engine model file run by onnxruntime, checked completely at load."""

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: Optional[int] = None,
                 dtype: str = "float32"):
        if dtype != "float32":
            raise ValueError(
                f"the onnxruntime backend runs the file's float32 graph; dtype must be 'float32', got {dtype!r}"
            )
        threads = check_threads(threads)
        super().__init__(path)
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

    def _logits(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                decoder_input_ids: np.ndarray) -> np.ndarray:
        """The teacher-forced forward: float32[B, T, V]."""
        feeds = {
            "pixel_values": np.ascontiguousarray(pixel_values, np.float32),
            "input_ids": np.ascontiguousarray(input_ids, np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, np.int64),
            "decoder_input_ids": np.ascontiguousarray(decoder_input_ids, np.int64),
        }
        with native_call("onnxruntime"):
            (out,) = self.session.run([OUTPUT], feeds)
        return out

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
        rows = generation.rows_per_input(options)
        step = self._step_fn(pixel_values, input_ids, attention_mask, rows)
        steps = 0

        def counted(decoder_input_ids: np.ndarray) -> np.ndarray:
            nonlocal steps
            steps += 1
            return step(decoder_input_ids)

        hypotheses = generation.generate(counted, len(pixel_values), options, on_token=on_token, **self._special())
        return hypotheses, {"steps": steps}
