"""PaliGemma at full size on a CPU: the engine beside transformers on the same checkpoint, with floors.

Why: issue 20 asks how the engine does on a model of real size (PaliGemma 2
3B-224: SigLIP So400m/14 -> Gemma 2 2B), where the prefill of 256 image
tokens through 3B parameters is most of a request, and how far each peer is
from what the machine allows.  ``pali-engine bench`` runs small PaLI models
with every peer in one process; a 3B model does not fit twice in 24 GB, so
here every peer runs alone in a fresh subprocess.

    python -m pali_engine.benchmarks.paligemma_checkpoint pg2-3b --shape paligemma2-3b-224
    python -m pali_engine.benchmarks.paligemma_full_size pg2-3b --threads 2

Input: a Hugging Face PaliGemma directory; its converted file (``DIR.onnx``
by default, bfloat16) is made with the converter when it is missing.  Peers,
one subprocess each, in turn: the engine (``Engine.load(file, dtype=D)`` for
each of ``--engine-dtypes``), transformers eager
(``PaliGemmaForConditionalGeneration`` in each of ``--transformers-dtypes``)
onnxruntime on transformers.js-style split graphs (vision encoder, token
embeddings, decoder with past key/values: benchmarks/paligemma_split_peer.py)
in each of ``--ort-dtypes`` (float32, and int8: onnxruntime's own dynamic
quantization of those graphs; written beside the checkpoint when missing)
and, with ``--compile``, transformers with its forward compiled by
``torch.compile`` (dynamic shapes).  Each subprocess reports its load time,
peak RSS (the kernel's high-water mark VmHWM, imports included; ru_maxrss
beside it), RSS after load and, per case,
every timed run, as JSON on stdout.  With ``--rounds N`` the list of peers runs N
times, forward then backward, each peer in a fresh process every round, and
each peer's figures summarize the runs of all its rounds: on a shared machine
whose speed drifts, no peer then has all its runs in a slow or a fast spell.

Inputs: one random 224x224 image per prompt, the prompt "caption en"; cases
batch 1 and 4 x greedy and beam 4; ``--new-tokens`` (32) forced in every peer
(``min_new_tokens = max_new_tokens``).  Metrics: vision ms, TTFT (pixel
values and ids in hand to the first token's logits), total, ms per token =
(total - TTFT) / (new tokens - 1), tokens/s.

Floors, measured in this process before the peers and again after them (the
better of the two): read bandwidth and the matrix rates of each precision;
from them the decode floor (weight bytes one step reads / bandwidth, or the
step's FLOPs / matrix rate when more) and the TTFT floor (prefill FLOPs /
matrix rate + one read of the output layer).  ``FORMULAS`` states them.

Output: ``paligemma-full-size-YYYYMMDD-HHMM.json`` in ``--out-dir`` (with a
``"summary"`` list a program can read), a Markdown table on stdout and a PNG
plot beside the JSON (TTFT and end-to-end latency beside ms per token).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

PROMPT = "caption en"
DEFAULT_CASES = "b1-greedy,b1-beam4,b4-greedy,b4-beam4"
DEFAULT_ENGINE_DTYPES = "bfloat16,int8,int4,float32"
DEFAULT_TRANSFORMERS_DTYPES = "bfloat16,float32"
DEFAULT_ORT_DTYPES = "float32,int8"
#: Where each peer's arithmetic can run at best: the floor of a precision uses the best rate among these.
FLOOR_RATES = {
    "float32": ("float32",),
    "float16": ("float32",),
    "bfloat16": ("bfloat16", "float32"),
    "int8": ("int8", "bfloat16", "float32"),
    "int4": ("int4", "int8", "bfloat16", "float32"),
    "int4_g64": ("int4", "int8", "bfloat16", "float32"),
    "int4_g128": ("int4", "int8", "bfloat16", "float32"),
}
FORMULAS = {
    "weight_bytes_per_parameter": "float32 4; float16 and bfloat16 2; int8 1 + 4/K (a float32 scale per output "
                                  "row of a K-input layer); int4 0.5 + 2/G (a float16 scale per output and group "
                                  "of G = 32, 64 or 128 inputs)",
    "decode_weight_bytes": "sum over the language model's linear layers (q, k, v, o, gate, up, down of every "
                           "layer) and the output layer (the tied token embedding, V x D) of N x K x the "
                           "precision's bytes per parameter (norms and the one embedding row per token left out)",
    "floor_ms_per_token": "max(decode_weight_bytes / read bandwidth, rows x 2 x decode parameters / best matrix "
                          "rate of the precision), rows = batch x beams; KV-cache reads left out",
    "prefill_flops": "per prompt: 2 x (vision matmul parameters, patch embedding and projector included) x image "
                     "tokens + 4 x image tokens^2 x vision width x vision layers (attention) + 2 x (language "
                     "matmul parameters without the output layer) x prompt tokens + 4 x prompt tokens^2 x "
                     "heads x head_dim x layers (attention over the whole bidirectional prefix) + 2 x V x D (the "
                     "first token's logits); times the batch (beams share their prompt's prefill)",
    "floor_ttft_ms": "prefill_flops / best matrix rate of the precision + output-layer bytes / read bandwidth",
    "best_matrix_rate": "float32: the best of torch float32 matmul, NumPy sgemm and the engine's float32 linear; "
                        "bfloat16: the best of those and torch bfloat16 matmul and the engine's bfloat16 linear; "
                        "int8: the best of all those and the engine's int8 W8A8 linear (FLOP/s = OP/s); int4: "
                        "the same and the engine's int4 linear",
    "weights_mb": "engine: linear layers (vision, projector, language, output) at the precision's bytes per "
                  "parameter, the other parameters (norms, biases, position embeddings) at 4 bytes, and for int8 "
                  "and int4 the bfloat16 copy of the token embedding kept for lookups (the float formats read "
                  "it from the output layer); transformers: every parameter once at its dtype's size; "
                  "onnxruntime: every parameter at 4 bytes and the token table twice (the embedding graph's "
                  "and the decoder's output layer), for int8 the matmul weights and the output layer at 1 "
                  "byte (one scale per tensor)",
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _csv(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_case(name: str) -> Tuple[int, int]:
    """"b4-beam4" -> (4, 4); "b1-greedy" -> (1, 1)."""
    match = re.fullmatch(r"b(\d+)-(greedy|beam(\d+))", name.strip())
    if not match or int(match.group(1)) < 1 or (match.group(3) is not None and int(match.group(3)) < 1):
        raise ValueError(f"unknown case {name!r}: write bB-greedy or bB-beamK, e.g. b4-beam4")
    return int(match.group(1)), int(match.group(3) or 1)


def case_name(batch: int, beams: int) -> str:
    return f"b{batch}-{'greedy' if beams == 1 else f'beam{beams}'}"


# --------------------------------------------------------------------------
# the model's sizes: parameters, weight bytes, FLOPs

def bytes_per_parameter(precision: str, inputs: int) -> float:
    """Bytes one weight of a linear layer with ``inputs`` inputs takes in ``precision`` (scales included)."""
    if precision == "float32":
        return 4.0
    if precision in ("bfloat16", "float16"):
        return 2.0
    if precision == "int8":
        return 1.0 + 4.0 / inputs
    if precision.startswith("int4"):
        group = int(precision.split("_g")[1]) if "_g" in precision else 32
        return 0.5 + 2.0 / group
    raise ValueError(f"no byte count for precision {precision!r}")


def _is_matmul_weight(name: str, shape: Sequence[int]) -> bool:
    return name.endswith(".weight") and (len(shape) == 2 or "patch_embedding" in name) and \
        "norm" not in name and "position_embedding" not in name and "embed_tokens" not in name


def model_sizes(config: Dict) -> Dict:
    """Parameter counts of a "paligemma" config (the converted file's ``pali.config``), by role.

    Returns {"parameters", "vision_matmul", "language_matmul", "head": (N, K), "embedding", "other",
    "layers": {name: (N, K)} of every matmul weight, "language_layers": the same for the language model}.
    """
    from pali_engine.paligemma_spec import expected_parameter_shapes

    shapes = expected_parameter_shapes(config)
    text = config["text_config"]
    vocab, width = config["vocab_size"], text["hidden_size"]
    matmuls: Dict[str, Tuple[int, int]] = {}
    other = 0
    for name, shape in shapes.items():
        if _is_matmul_weight(name, shape):
            matmuls[name] = (int(shape[0]), int(np.prod(shape[1:])))
        elif "embed_tokens" not in name:
            other += int(np.prod(shape))
    head = matmuls.pop("lm_head.weight", (vocab, width))
    language = {n: s for n, s in matmuls.items() if n.startswith("model.language_model.")}
    vision = {n: s for n, s in matmuls.items() if n not in language}
    return {"parameters": int(sum(np.prod(s) for s in shapes.values())),
            "vision_matmul": int(sum(n * k for n, k in vision.values())),
            "language_matmul": int(sum(n * k for n, k in language.values())),
            "head": head, "embedding": vocab * width, "other": other,
            "layers": matmuls, "language_layers": language,
            "tied": bool(config.get("tie_word_embeddings", True))}


def decode_weight_bytes(sizes: Dict, precision: str) -> float:
    """Bytes of weights one decode step reads in ``precision``: the language model's layers and the head."""
    layers = list(sizes["language_layers"].values()) + [sizes["head"]]
    return float(sum(n * k * bytes_per_parameter(precision, k) for n, k in layers))


def engine_weight_bytes(sizes: Dict, precision: str) -> float:
    """The engine's weights after load in ``precision`` (FORMULAS["weights_mb"])."""
    layers = list(sizes["layers"].values()) + [sizes["head"]]
    total = sum(n * k * bytes_per_parameter(precision, k) for n, k in layers) + 4.0 * sizes["other"]
    if sizes["tied"] and precision not in ("float32", "float16", "bfloat16"):
        total += 2.0 * sizes["embedding"]
    elif not sizes["tied"]:
        total += 4.0 * sizes["embedding"]
    return float(total)


def torch_weight_bytes(sizes: Dict, precision: str) -> float:
    return float(sizes["parameters"]) * {"float32": 4, "bfloat16": 2, "float16": 2}[precision]


def ort_weight_bytes(sizes: Dict, precision: str) -> float:
    """The split graphs' weights (FORMULAS["weights_mb"])."""
    head_n, head_k = sizes["head"]
    matmul = sizes["vision_matmul"] + sizes["language_matmul"] + head_n * head_k
    linear_bytes = 1.0 if precision == "int8" else 4.0
    return float(matmul * linear_bytes + 4.0 * (sizes["embedding"] + sizes["other"]))


def prefill_flops(config: Dict, sizes: Dict, prompt_tokens: int) -> float:
    """FLOPs of one prompt's prefill and first logits (FORMULAS["prefill_flops"])."""
    vision, text = config["vision_config"], config["text_config"]
    image_tokens = config["num_image_tokens"]
    attention_vision = 4.0 * image_tokens ** 2 * vision["hidden_size"] * vision["num_hidden_layers"]
    attention_text = (4.0 * prompt_tokens ** 2 * text["num_attention_heads"] * text["head_dim"]
                      * text["num_hidden_layers"])
    head_n, head_k = sizes["head"]
    return (2.0 * sizes["vision_matmul"] * image_tokens + attention_vision
            + 2.0 * sizes["language_matmul"] * prompt_tokens + attention_text + 2.0 * head_n * head_k)


# --------------------------------------------------------------------------
# floors: what the machine can do, measured in this run

def _best_of(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warms the threads and the pages
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth(threads: int, mib: int) -> Dict[str, float]:
    """GB/s reading a ``mib`` MiB float32 buffer: torch.sum with ``threads`` threads and NumPy threads."""
    import torch

    from . import floors

    torch.set_num_threads(threads)
    buffer = torch.ones(mib * (1 << 20) // 4, dtype=torch.float32)
    seconds = _best_of(lambda: torch.sum(buffer), 5)
    rates = {"torch_sum": buffer.numel() * 4 / seconds / 1e9}
    del buffer
    rates["numpy_threads"] = floors.read_bandwidth(threads, mib=mib, repeats=5)
    return {k: round(v, 2) for k, v in rates.items()}


def _matmul_size(dtype, largest: int, seconds: float = 0.5) -> int:
    """The side of a square matmul in ``dtype`` that takes about ``seconds`` at most, up to ``largest``:
    where a precision has no fast path (bfloat16 without AVX-512 BF16 runs at a few GFLOP/s or less),
    the full size would take minutes per product and tell no more."""
    import torch

    probe = 256
    a = torch.randn(probe, probe, dtype=dtype)
    rate = 2.0 * probe ** 3 / _best_of(lambda: torch.mm(a, a), 2)
    side = int((seconds * rate / 2.0) ** (1.0 / 3.0)) // 128 * 128
    return max(probe, min(largest, side))


def matrix_rates(threads: int, quick: bool) -> Dict[str, Dict[str, float]]:
    """GFLOP/s of the matrix products a precision can use: {precision: {how: rate}}."""
    import torch

    from pali_engine._core import ops

    from . import floors

    torch.set_num_threads(threads)
    ops.set_threads(threads)
    n = 1024 if quick else 2048
    repeats = 2 if quick else 4
    rates: Dict[str, Dict[str, float]] = {"float32": {}, "bfloat16": {}, "int8": {}, "int4": {}}
    for dtype, key in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
        size = _matmul_size(dtype, n)
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        rates[key][f"torch matmul {size}^3"] = 2.0 * size ** 3 / _best_of(lambda: torch.mm(a, b), repeats) / 1e9
    rates["float32"][f"numpy sgemm {n}^3"] = floors.sgemm_gflops(n, repeats)
    # The engine's own linear at a prefill's row count, on Gemma 2 2B's feed-forward shape.
    m, out_features, in_features = (64, 1024, 512) if quick else (256, 9216, 2304)
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((out_features, in_features), dtype=np.float32) * 0.02)
    x = rng.standard_normal((m, in_features), dtype=np.float32)
    y = np.empty((m, out_features), np.float32)
    flops = 2.0 * m * out_features * in_features
    label = f"engine linear m={m} {out_features}x{in_features}"
    for key, fmt, w8a8 in (("float32", "f32", False), ("bfloat16", "bf16", False), ("int8", "i8", True),
                           ("int4", "i4", False)):
        prepared = ops.prepare_linear(weight, None, fmt, int8_activations=w8a8)
        rates[key][label] = flops / _best_of(lambda: ops.linear(x, prepared, out=y), repeats) / 1e9
    return {p: {k: round(v, 1) for k, v in r.items()} for p, r in rates.items()}


def measure_floors(threads: int, quick: bool) -> Dict:
    return {"read_bandwidth_gb_s": read_bandwidth(threads, 256 if quick else 2048),
            "matrix_gflop_s": matrix_rates(threads, quick), "buffer_mib": 256 if quick else 2048,
            "threads": threads}


def best_floors(measurements: Sequence[Dict]) -> Dict:
    """The best bandwidth and, per precision, the best matrix rate of ``measurements`` (FLOOR_RATES)."""
    bandwidth = max(v for m in measurements for v in m["read_bandwidth_gb_s"].values())
    by_unit = {unit: max(v for m in measurements for v in m["matrix_gflop_s"][unit].values())
               for unit in measurements[0]["matrix_gflop_s"]}
    rates = {p: max(by_unit[u] for u in units if u in by_unit) for p, units in FLOOR_RATES.items()}
    return {"read_bandwidth_gb_s": bandwidth, "matrix_gflop_s_by_unit": by_unit,
            "matrix_gflop_s_by_precision": rates}


def case_floors(config: Dict, sizes: Dict, prompt_tokens: int, best: Dict, precision: str,
                batch: int, beams: int) -> Dict[str, float]:
    bandwidth = best["read_bandwidth_gb_s"] * 1e9
    rate = best["matrix_gflop_s_by_precision"][precision] * 1e9
    head_n, head_k = sizes["head"]
    step_bytes = decode_weight_bytes(sizes, precision)
    step_flops = 2.0 * (sizes["language_matmul"] + head_n * head_k) * batch * beams
    per_token = max(step_bytes / bandwidth, step_flops / rate)
    ttft = (prefill_flops(config, sizes, prompt_tokens) * batch / rate
            + head_n * head_k * bytes_per_parameter(precision, head_k) / bandwidth)
    return {"ms_per_token": per_token * 1e3, "ttft_ms": ttft * 1e3, "decode_weight_bytes": step_bytes}


# --------------------------------------------------------------------------
# the peers, each in a subprocess of its own (worker_main)

def _rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_rss_mb() -> Dict[str, Optional[float]]:
    """This process's peak RSS: the kernel's high-water mark of its memory (VmHWM), and ru_maxrss.

    ru_maxrss of a process started by fork and exec also counts the forked copy of its parent
    before the exec (the parent's RSS at the fork), so VmHWM is the peer's own peak.
    """
    hwm = None
    try:
        with open("/proc/self/status") as f:
            hwm = next((int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmHWM:")), None)
    except OSError:
        pass
    return {"vm_hwm_mb": hwm, "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


class EngineRunner:
    """The engine: Engine.load(file, dtype=...).generate on the images and prompts."""

    def __init__(self, spec: Dict):
        from pali_engine import Engine

        self.engine = Engine.load(spec["onnx"], dtype=spec["dtype"], threads=spec["threads"])
        self.images = list(np.load(spec["inputs"])["images"])

    def run(self, batch: int, beams: int, new_tokens: int) -> Dict:
        results = self.engine.generate(self.images[:batch], [PROMPT] * batch, max_new_tokens=new_tokens,
                                       min_new_tokens=new_tokens, num_beams=beams)
        t = results[0].timings
        total = t["generate_ms"]  # preprocessing excluded, as for transformers (pixel values in hand)
        return {"vision_ms": t["vision_ms"], "prefill_ms": t["encoder_ms"],
                "ttft_ms": total - t["decode_ms"] + t["first_token_ms"], "total_ms": total,
                "preprocess_ms": t["preprocess_ms"], "steps": int(t["steps"]),
                "tokens": [list(map(int, r.tokens))[:new_tokens] for r in results]}


class TransformersRunner:
    """transformers' PaliGemmaForConditionalGeneration.generate, eager or with its forward compiled."""

    def __init__(self, spec: Dict):
        import torch
        from transformers import PaliGemmaForConditionalGeneration

        self.torch = torch
        dtype = getattr(torch, spec["dtype"])
        try:
            self.model = PaliGemmaForConditionalGeneration.from_pretrained(spec["hf_dir"], dtype=dtype)
        except TypeError:  # transformers 4 names it torch_dtype
            self.model = PaliGemmaForConditionalGeneration.from_pretrained(spec["hf_dir"], torch_dtype=dtype)
        self.model.eval()
        if spec["peer"] == "torch.compile":
            # The whole forward, shapes dynamic: transformers' own route (a static cache with its decode step
            # compiled) fails in PaliGemma's mask code; each case's warm-up absorbs its compilations.
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
        data = np.load(spec["inputs"])
        self.inputs = {k: torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        self.inputs["pixel_values"] = torch.from_numpy(data["pixel_values"]).to(dtype)
        self.marks: Dict[str, float] = {}
        inner = self.model.model
        inner.vision_tower.register_forward_pre_hook(self._mark("vision_start"))
        inner.multi_modal_projector.register_forward_hook(self._mark("vision_end"))

    def _mark(self, key: str):
        """A hook that notes when it first ran in a call (returning None: inputs and outputs untouched)."""

        def hook(*args):
            self.marks.setdefault(key, time.perf_counter())

        return hook

    def run(self, batch: int, beams: int, new_tokens: int) -> Dict:
        import warnings

        from transformers import LogitsProcessor, LogitsProcessorList

        stamps: List[float] = []

        class Stamp(LogitsProcessor):
            """Notes when each step's logits are ready (the first: the time to first token)."""

            def __call__(self, input_ids, scores):
                stamps.append(time.perf_counter())
                return scores

        self.marks.clear()
        args = {k: v[:batch] for k, v in self.inputs.items()}
        with self.torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            out = self.model.generate(**args, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      num_beams=beams, do_sample=False, length_penalty=1.0,
                                      logits_processor=LogitsProcessorList([Stamp()]))
            t1 = time.perf_counter()
        length = args["input_ids"].shape[1]
        return {"vision_ms": (self.marks["vision_end"] - self.marks["vision_start"]) * 1e3,
                "ttft_ms": (stamps[0] - t0) * 1e3, "total_ms": (t1 - t0) * 1e3, "steps": len(stamps),
                "tokens": [row[:new_tokens] for row in out[:, length:].tolist()]}


class OrtRunner:
    """onnxruntime on the split graphs: SplitGraphGenerator.generate on the processed inputs."""

    def __init__(self, spec: Dict):
        from .paligemma_split_peer import SplitGraphGenerator

        self.generator = SplitGraphGenerator(spec["split_dir"], spec["threads"])
        data = np.load(spec["inputs"])
        self.inputs = {k: data[k] for k in ("pixel_values", "input_ids", "attention_mask")}

    def run(self, batch: int, beams: int, new_tokens: int) -> Dict:
        out = self.generator.generate(self.inputs["pixel_values"][:batch], self.inputs["input_ids"][:batch],
                                      self.inputs["attention_mask"][:batch], new_tokens, num_beams=beams)
        return {"vision_ms": out["vision_ms"], "ttft_ms": out["ttft_ms"], "total_ms": out["total_ms"],
                "steps": out["steps"], "tokens": out["tokens"].tolist()}


RUNNERS = {"engine": EngineRunner, "transformers": TransformersRunner, "torch.compile": TransformersRunner,
           "onnxruntime": OrtRunner}


class Stopped(BaseException):
    """SIGTERM arrived: the worker reports the cases it finished (not an Exception: no case failed)."""


def _raise_stopped(signum, frame):
    raise Stopped()


def worker_main(spec: Dict) -> int:
    """In a fresh process: load one peer, run every case (warm-up, then the timed runs); JSON on stdout.

    SIGTERM stops it between two steps of its work: the cases it finished are reported, the others
    listed as not run (so a peer that would run past the time one can give it still counts).
    """
    signal.signal(signal.SIGTERM, _raise_stopped)
    threads = spec["threads"]
    if spec["peer"] in ("transformers", "torch.compile"):
        import torch

        torch.set_num_threads(threads)
    report: Dict = {"rss_before_load_mb": _rss_mb(), "cases": {}, "failed": {}, "not_run": {}}
    t0 = time.perf_counter()
    runner = RUNNERS[spec["peer"]](spec)
    report["load_s"] = round(time.perf_counter() - t0, 2)
    report["rss_after_load_mb"] = _rss_mb()
    started = time.perf_counter()
    stopped_at = None
    for index, (batch, beams) in enumerate(spec["cases"]):
        name = case_name(batch, beams)
        warmup = spec["warmup"] if index == 0 or not spec["warmup_once"] else 0
        budget = spec.get("budget_s")
        if stopped_at is not None:
            report["not_run"][name] = f"not run: the peer was stopped (SIGTERM) after {stopped_at:.0f} s of cases"
            continue
        if budget is not None and time.perf_counter() - started > budget:
            report["not_run"][name] = f"not run: this peer's time budget ({budget:.0f} s) was spent"
            continue
        runs = []
        try:
            for r in range(warmup + spec["repeats"]):
                t = time.perf_counter()
                res = runner.run(batch, beams, spec["new_tokens"])
                res["wall_ms"] = (time.perf_counter() - t) * 1e3
                if r >= warmup:
                    runs.append(res)
                else:
                    report.setdefault("warmup_ms", {})[name] = round(res["wall_ms"], 1)
                _log(f"  [{spec['label']}] {name} run {r + 1}/{warmup + spec['repeats']}: "
                     f"TTFT {res['ttft_ms']:.0f} ms, total {res['total_ms']:.0f} ms")
        except Stopped:
            stopped_at = time.perf_counter() - started
            report["not_run"][name] = f"not run: the peer was stopped (SIGTERM) after {stopped_at:.0f} s of cases"
            continue
        except Exception as error:
            report["failed"][name] = f"{type(error).__name__}: {error}"
            _log(traceback.format_exc())
            continue
        report["cases"][name] = runs
    peak = _peak_rss_mb()
    report["peak_rss_mb"] = round(peak["vm_hwm_mb"] or peak["ru_maxrss_mb"], 1)
    report["ru_maxrss_mb"] = round(peak["ru_maxrss_mb"], 1)
    print(json.dumps(report))
    return 0


def run_peer(spec: Dict, timeout_s: float) -> Dict:
    """Runs worker_main in a fresh process; its report, or {"skipped": why}."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    command = [sys.executable, "-m", "pali_engine.benchmarks.paligemma_full_size", "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout_s,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"not run: did not finish within {timeout_s:.0f} s (--peer-timeout-s)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"skipped": f"failed: the worker exited with status {done.returncode} "
                           f"(its error is in the log above)"}
    return json.loads(lines[-1])


def missing_package(peer: str) -> Optional[str]:
    needs = {"engine": (), "onnxruntime": ("onnxruntime",)}.get(peer, ("transformers", "torch"))
    for module in needs:
        try:
            __import__(module)
        except Exception as error:
            return f"not run: {module} not importable ({type(error).__name__}: {error})"
    return None


# --------------------------------------------------------------------------
# statistics, tables, plot

METRICS = ("vision_ms", "ttft_ms", "ms_per_token", "total_ms", "tokens_per_s")


def _with_derived(run: Dict, batch: int, new_tokens: int) -> Dict:
    run = dict(run)
    run["ms_per_token"] = (run["total_ms"] - run["ttft_ms"]) / (new_tokens - 1)
    run["tokens_per_s"] = batch * new_tokens / run["total_ms"] * 1e3
    return run


def summarize_case(runs: List[Dict], batch: int, new_tokens: int) -> Dict:
    runs = [_with_derived(r, batch, new_tokens) for r in runs]
    out = {}
    for metric in METRICS:
        values = [r[metric] for r in runs if r.get(metric) is not None]
        if values:
            out[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                           "n": len(values)}
    out["steps"] = runs[-1]["steps"]
    return out


def _agreement(peers: Dict) -> Dict:
    """Per case, the rows of each peer whose tokens equal the reference peer's (transformers float32,
    else the engine float32)."""
    reference = next((n for n in ("transformers float32", "engine float32") if n in peers and
                      peers[n].get("tokens")), None)
    if reference is None:
        return {}
    out = {"reference": reference, "cases": {}}
    for case, ref_rows in peers[reference]["tokens"].items():
        out["cases"][case] = {}
        for name, peer in peers.items():
            rows = peer.get("tokens", {}).get(case)
            if rows is not None and name != reference:
                out["cases"][case][name] = f"{sum(a == b for a, b in zip(rows, ref_rows))}/{len(ref_rows)}"
    return out


def _significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (floors of a tiny model are fractions of a ms)."""
    return float(f"{value:.{digits}g}")


def _fmt(value: Optional[float], digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown_table(result: Dict) -> str:
    lines = ["| peer | precision | case | vision ms | TTFT ms (floor) | ms/token (floor) | total ms | tokens/s | "
             "load s | peak RSS MB | weights MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["summary"]:
        peer = result["peers"][f"{row['peer']} {row['precision']}"]
        stats = peer["cases"][row["case"]]
        floor = result["floors"]["per_precision"][row["precision"]]["cases"][row["case"]]
        ms_token = stats["ms_per_token"]["median"]
        ttft = stats["ttft_ms"]["median"]
        lines.append(
            f"| {row['peer']} | {row['precision']} | {row['case']} | {_fmt(stats['vision_ms']['median'])} | "
            f"{_fmt(ttft)} ({_fmt(floor['ttft_ms'])}, {ttft / floor['ttft_ms']:.1f}x) | "
            f"{_fmt(ms_token, 1)} ({_fmt(floor['ms_per_token'], 1)}, "
            f"{ms_token / floor['ms_per_token']:.1f}x) | {_fmt(stats['total_ms']['median'])} | "
            f"{_fmt(stats['tokens_per_s']['median'], 2)} | {_fmt(peer['load_s'], 1)} | "
            f"{_fmt(row['peak_rss_mb'])} | {_fmt(row['weights_mb'])} |")
    skipped = [f"* {name}: {why}" for name, why in result["not_run"].items()]
    for name, peer in result["peers"].items():
        for case, why in {**peer.get("failed", {}), **peer.get("not_run", {})}.items():
            skipped.append(f"* {name}, {case}: {why}")
    return "\n".join(lines + ([""] + skipped if skipped else []))


def header(result: Dict) -> str:
    m, f = result["machine"], result["floors"]["best"]
    rates = ", ".join(f"{p} {v:.0f}" for p, v in f["matrix_gflop_s_by_unit"].items())
    return (f"{result['model']['name']} ({result['model']['parameters']:,} parameters, random weights), "
            f"{result['date']}: {m.get('cpu', '?')} ({', '.join(m.get('cpu_flags', [])) or 'no AVX'}), "
            f"{m.get('cpus')} cores, {result['threads']} threads; read bandwidth "
            f"{f['read_bandwidth_gb_s']:.1f} GB/s, matrix GFLOP/s {rates}. "
            f"Median of {result['repeats']} runs after {result['warmup']} warm-up "
            f"({'on the first case of each peer' if result['warmup_once'] else 'per case'}); "
            f"{result['new_tokens']} new tokens forced; in brackets the floor and the ratio to it.")


def plot(result: Dict, path: str) -> Optional[str]:
    """TTFT, end-to-end latency and ms per token of every peer and case, floors marked; None or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as error:
        return f"matplotlib not importable: {error}"
    rows = result["summary"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    peers = list(dict.fromkeys(f"{r['peer']} {r['precision']}" for r in rows))
    panels = (("ttft_ms", "time to first token (ms)", "floor_ttft_ms"),
              ("total_ms", "end-to-end latency, 32 tokens (ms)", None),
              ("ms_per_token", "ms per token (decode step)", "floor_ms_per_token"))
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    width = 0.8 / max(1, len(peers))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, title, floor_key) in zip(axes, panels):
        for j, peer in enumerate(peers):
            xs, ys, lo, hi, floor_x, floor_y = [], [], [], [], [], []
            for i, case in enumerate(cases):
                stats = result["peers"][peer]["cases"].get(case)
                if not stats:
                    continue
                s = stats[metric]
                x = i + (j - (len(peers) - 1) / 2) * width
                xs.append(x)
                ys.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
                row = next(r for r in rows if f"{r['peer']} {r['precision']}" == peer and r["case"] == case)
                if floor_key:
                    floor_x.append(x)
                    floor_y.append(row[floor_key])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=peer, color=colors[j % len(colors)])
            if floor_x:
                ax.scatter(floor_x, floor_y, marker="_", s=120, color="black", zorder=3,
                           label="floor (same precision)" if j == 0 else None)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    m = result["machine"]
    fig.suptitle(f"{result['model']['name']} (random weights): pali-engine and its peers, {m.get('cpu', '')}, "
                 f"{result['threads']} threads ({result['date']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------
# the run

def cpu_flags() -> List[str]:
    """The flags among avx2, avx512f, avx512_bf16, avx512_vnni and amx_* that this CPU has."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
    return [x for x in wanted if x in flags] + sorted(x for x in flags if x.startswith("amx"))


def model_name(config: Dict, parameters: int) -> str:
    """"paligemma2-3b-224" from the config (the released checkpoints' naming)."""
    version = "2" if config["paligemma_version"] == 2 else ""
    billions = parameters / 1e9
    size = f"{round(billions)}b" if billions >= 1 else f"{parameters / 1e6:.0f}m"
    return f"paligemma{version}-{size}-{config['image_size']}"


def prepare_inputs(config: Dict, tokenizer: bytes, batch: int, seed: int, path: str) -> int:
    """Random images and their processed inputs for ``batch`` prompts into ``path`` (npz); the prompt's length."""
    from pali_engine.paligemma_processor import PaliGemmaProcessor

    processor = PaliGemmaProcessor.from_config(config, tokenizer, padding_side="left")
    size = config["image_size"]
    images = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    processed = processor(list(images), [PROMPT] * batch)
    np.savez(path, images=images, **processed)
    return int(processed["input_ids"].shape[1])


def convert_if_missing(hf_dir: str, onnx_path: str) -> Optional[float]:
    """Converts ``hf_dir`` to ``onnx_path`` (bfloat16) in a subprocess when the file is missing; seconds or None."""
    if os.path.isfile(onnx_path):
        return None
    _log(f"converting the checkpoint to {os.path.basename(onnx_path)} (bfloat16) ...")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pali_engine.export.paligemma", hf_dir, "-o", onnx_path,
                    "--dtype", "bfloat16"], check=True)
    return round(time.perf_counter() - t0, 1)


def split_graphs_if_missing(hf_dir: str, folder: str, int8_folder: Optional[str]) -> Dict:
    """Writes the split graphs (and their int8 quantization) in a subprocess where missing:
    {"seconds": s or None} or {"failed": why}."""
    from .paligemma_split_peer import have_graphs

    if have_graphs(folder) and (int8_folder is None or have_graphs(int8_folder)):
        return {"seconds": None}
    _log(f"writing onnxruntime's split graphs to {os.path.basename(folder)} ...")
    command = [sys.executable, "-m", "pali_engine.benchmarks.paligemma_split_peer", "export", hf_dir, folder]
    t0 = time.perf_counter()
    done = subprocess.run(command + (["--int8", int8_folder] if int8_folder else []))
    if done.returncode != 0:
        return {"failed": f"failed: writing the split graphs exited with status {done.returncode} "
                          f"(its error is in the log above)"}
    return {"seconds": round(time.perf_counter() - t0, 1)}


def _recorded_command(argv: List[str]) -> str:
    """The command line as the JSON records it: folders and files by their last name only."""
    words = [os.path.basename(a.rstrip(os.sep)) if os.sep in a and not a.startswith("-") else a for a in argv]
    return "python -m pali_engine.benchmarks.paligemma_full_size " + " ".join(words)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", nargs="?", help="a Hugging Face PaliGemma directory")
    parser.add_argument("--onnx", default=None, help="its converted file (default: HF_DIR.onnx; converted, in "
                                                     "bfloat16, when missing)")
    parser.add_argument("--engine-dtypes", default=DEFAULT_ENGINE_DTYPES,
                        help=f"the engine's dtypes, one peer each (default {DEFAULT_ENGINE_DTYPES}; '' for none)")
    parser.add_argument("--transformers-dtypes", default=DEFAULT_TRANSFORMERS_DTYPES,
                        help=f"transformers' dtypes (default {DEFAULT_TRANSFORMERS_DTYPES}; '' for none)")
    parser.add_argument("--ort-dtypes", default=DEFAULT_ORT_DTYPES,
                        help=f"onnxruntime on the split graphs: float32 and/or int8 (its dynamic quantization; "
                             f"default {DEFAULT_ORT_DTYPES}; '' for none)")
    parser.add_argument("--split-dir", default=None,
                        help="the split graphs' folder (default HF_DIR-split, and HF_DIR-split-int8 for int8; "
                             "written when missing)")
    parser.add_argument("--compile", action="store_true",
                        help="add transformers with torch.compile (its forward, dynamic shapes) in "
                             "--compile-dtype; skipped with the reason when it fails or runs out of time")
    parser.add_argument("--compile-dtype", default="bfloat16")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"bB-greedy / bB-beamK (default {DEFAULT_CASES})")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated, forced (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per peer and case (default 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times the list of peers runs, in alternating order, each peer in a fresh process "
                             "every round; the runs of all rounds are summarized together (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per peer and case (default 1)")
    parser.add_argument("--warmup-once", action="store_true",
                        help="the untimed runs of each peer on its first case only: what they remove (weights "
                             "paged in, first-call allocations) is the process's, and at 3B a run takes seconds "
                             "to minutes")
    parser.add_argument("--threads", type=int, default=None, help="threads of every peer (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images")
    parser.add_argument("--peer-budget-s", type=float, default=None,
                        help="a peer starts no new case after this many seconds of cases (the rest: not run)")
    parser.add_argument("--peer-timeout-s", type=float, default=3600.0,
                        help="a peer's process is stopped after this many seconds (default 3600)")
    parser.add_argument("--compile-timeout-s", type=float, default=900.0,
                        help="the same for the torch.compile peer (default 900)")
    parser.add_argument("--out-dir", default=None,
                        help="where the JSON and PNG go (default benchmarks/results in the repository, else .)")
    parser.add_argument("--work-dir", default=None,
                        help="where the peers' inputs file goes while they run (default: the temporary folder)")
    parser.add_argument("--quick-floors", action="store_true",
                        help="small buffers and matrices for the floors (for tests; the floors are then loose)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def split_folders(args) -> Dict[str, str]:
    base = os.path.abspath(args.split_dir or args.hf_dir.rstrip(os.sep) + "-split")
    return {"float32": base, "int8": base + "-int8"}


def peer_specs(args, onnx_path: str, inputs_path: str, threads: int,
               cases: List[Tuple[int, int]]) -> List[Dict]:
    common = {"onnx": onnx_path, "hf_dir": os.path.abspath(args.hf_dir), "inputs": inputs_path,
              "threads": threads, "cases": cases, "new_tokens": args.new_tokens, "warmup": args.warmup,
              "warmup_once": args.warmup_once, "repeats": args.repeats, "budget_s": args.peer_budget_s}
    specs = [dict(common, peer="engine", dtype=d, label=f"engine {d}") for d in _csv(args.engine_dtypes)]
    specs += [dict(common, peer="transformers", dtype=d, label=f"transformers {d}")
              for d in _csv(args.transformers_dtypes)]
    split = split_folders(args)
    specs += [dict(common, peer="onnxruntime", dtype=d, label=f"onnxruntime {d}", split_dir=split[d])
              for d in _csv(args.ort_dtypes)]
    if args.compile:
        specs.append(dict(common, peer="torch.compile", dtype=args.compile_dtype,
                          label=f"torch.compile {args.compile_dtype}"))
    return specs


def merge_peer_reports(spec: Dict, reports: List[Dict], sizes: Dict, new_tokens: int) -> Dict:
    """One peer's entry of the results from its reports, one per round: the timed runs of every round
    together; load time and RSS from the round that loaded fastest and the highest peak."""
    precision = spec["dtype"]
    fastest = min(reports, key=lambda r: r["load_s"])
    peer = {"peer": spec["peer"], "precision": precision, "load_s": fastest["load_s"],
            "load_s_rounds": [r["load_s"] for r in reports],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
            "rss_after_load_mb": fastest["rss_after_load_mb"], "rss_before_load_mb": fastest["rss_before_load_mb"],
            "wall_s": round(sum(r["wall_s"] for r in reports), 1), "rounds": len(reports),
            "weights_mb": WEIGHT_BYTES.get(spec["peer"], torch_weight_bytes)(sizes, precision) / 2 ** 20,
            "failed": {case: why for r in reports for case, why in r["failed"].items()},
            "not_run": reports[-1]["not_run"],
            "warmup_ms": reports[-1].get("warmup_ms", {}), "cases": {}, "runs": {}, "tokens": {}}
    for cname in reports[-1]["cases"]:
        runs = [dict(run, round=i + 1) for i, r in enumerate(reports) for run in r["cases"].get(cname, [])]
        batch, _ = parse_case(cname)
        peer["cases"][cname] = summarize_case(runs, batch, new_tokens)
        peer["runs"][cname] = [{k: v for k, v in r.items() if k != "tokens"} for r in runs]
        peer["tokens"][cname] = runs[-1]["tokens"]
    return peer


WEIGHT_BYTES = {"engine": engine_weight_bytes, "onnxruntime": ort_weight_bytes}


def _write_json(result: Dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def run(args: argparse.Namespace, argv: List[str]) -> int:
    from pali_engine.dtypes import DTYPES
    from pali_engine.export.paligemma.checkpoint import read_config, read_tokenizer

    from .harness import machine_info, package_versions

    if not args.hf_dir:
        print("error: give a Hugging Face PaliGemma directory", file=sys.stderr)
        return 2
    try:
        cases = [parse_case(c) for c in _csv(args.cases)]
        for d in _csv(args.engine_dtypes):
            if d not in DTYPES:
                raise ValueError(f"engine dtype {d!r}: choose from {', '.join(DTYPES)}")
        for d in _csv(args.transformers_dtypes) + ([args.compile_dtype] if args.compile else []):
            if d not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"transformers dtype {d!r}: choose from float32, bfloat16, float16")
        for d in _csv(args.ort_dtypes):
            if d not in ("float32", "int8"):
                raise ValueError(f"onnxruntime dtype {d!r}: choose from float32, int8")
        if args.new_tokens < 2:
            raise ValueError("--new-tokens must be at least 2")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    threads = args.threads or os.cpu_count() or 1
    out_dir = args.out_dir or (os.path.join("benchmarks", "results")
                               if os.path.isfile(os.path.join("benchmarks", "harness.py")) else ".")
    work_dir = args.work_dir or tempfile.gettempdir()
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(work_dir, exist_ok=True)
    started = time.time()
    now = _dt.datetime.now(_dt.timezone.utc)
    stem = "paligemma-full-size-" + now.strftime("%Y%m%d-%H%M")
    onnx_path = os.path.abspath(args.onnx or args.hf_dir.rstrip(os.sep) + ".onnx")
    convert_s = convert_if_missing(args.hf_dir, onnx_path)

    config, tokenizer = read_config(args.hf_dir), read_tokenizer(args.hf_dir)
    sizes = model_sizes(config)
    inputs_path = os.path.abspath(os.path.join(work_dir, stem + "-inputs.npz"))
    json_path = os.path.join(out_dir, stem + ".json")
    prompt_tokens = prepare_inputs(config, tokenizer, max(b for b, _ in cases), args.seed, inputs_path)

    _log(f"measuring the machine's floors ({threads} threads) ...")
    floors_start = measure_floors(threads, args.quick_floors)
    name = model_name(config, sizes["parameters"])
    machine = dict(machine_info(), cpu_flags=cpu_flags())
    result: Dict = {
        "format": "pali-engine-paligemma-full-size-1", "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": _recorded_command(argv), "machine": machine, "versions": package_versions(),
        "threads": threads, "repeats": args.repeats, "rounds": args.rounds, "warmup": args.warmup,
        "warmup_once": args.warmup_once, "new_tokens": args.new_tokens,
        "model": {"name": name, "parameters": sizes["parameters"], "weights": "random (seeded)",
                  "converted_file_dtype": "bfloat16", "conversion_s": convert_s,
                  "vision_matmul_parameters": sizes["vision_matmul"],
                  "language_matmul_parameters": sizes["language_matmul"], "head": list(sizes["head"])},
        "inputs": {"prompt": PROMPT, "images": f"random uint8 {config['image_size']}x{config['image_size']} "
                                               f"RGB, one per prompt (seed {args.seed})",
                   "prompt_tokens": prompt_tokens, "image_tokens": config["num_image_tokens"]},
        "formulas": FORMULAS, "floors": {"start": floors_start}, "peers": {}, "not_run": {},
    }
    ort_dtypes = _csv(args.ort_dtypes)
    if ort_dtypes and not missing_package("onnxruntime"):
        folders = split_folders(args)
        written = split_graphs_if_missing(os.path.abspath(args.hf_dir), folders["float32"],
                                          folders["int8"] if "int8" in ort_dtypes else None)
        result["model"]["split_graphs_s"] = written.get("seconds")
        if "failed" in written:
            result["not_run"].update({f"onnxruntime {d}": written["failed"] for d in ort_dtypes})
            args.ort_dtypes = ""
    specs = peer_specs(args, onnx_path, inputs_path, threads, cases)
    reports: Dict[str, List[Dict]] = {}
    for round_index in range(args.rounds):
        # Alternate the order, so that no peer always runs in the same spell of a shared machine.
        for spec in specs if round_index % 2 == 0 else specs[::-1]:
            label = spec["label"]
            if label in result["not_run"]:
                continue
            why = missing_package(spec["peer"])
            if why:
                result["not_run"][label] = why
                continue
            _log(f"[{label}] round {round_index + 1}/{args.rounds}: loading and running {len(cases)} cases "
                 "in a fresh process ...")
            t0 = time.time()
            timeout = args.compile_timeout_s if spec["peer"] == "torch.compile" else args.peer_timeout_s
            report = run_peer(spec, timeout)
            if "skipped" in report:
                result["not_run"][label] = report["skipped"]
                result["peers"].pop(label, None)
                _log(f"[{label}] {report['skipped']}")
                continue
            report["wall_s"] = round(time.time() - t0, 1)
            reports.setdefault(label, []).append(report)
            result["peers"][label] = merge_peer_reports(spec, reports[label], sizes, args.new_tokens)
            _write_json(result, json_path)  # what is done so far, in case the run is cut short
            _log(f"[{label}] done in {report['wall_s']:.0f} s (load {report['load_s']:.1f} s, "
                 f"peak RSS {report['peak_rss_mb']:.0f} MB)")

    _log("measuring the machine's floors again ...")
    result["floors"]["end"] = measure_floors(threads, args.quick_floors)
    best = best_floors([result["floors"]["start"], result["floors"]["end"]])
    result["floors"]["best"] = best
    result["floors"]["per_precision"] = {}
    for precision in {p["precision"] for p in result["peers"].values()}:
        result["floors"]["per_precision"][precision] = {
            "decode_weight_bytes": decode_weight_bytes(sizes, precision),
            "prefill_flops_per_prompt": prefill_flops(config, sizes, prompt_tokens),
            "matrix_gflop_s": best["matrix_gflop_s_by_precision"][precision],
            "cases": {case_name(b, k): case_floors(config, sizes, prompt_tokens, best, precision, b, k)
                      for b, k in cases}}
    result["agreement"] = _agreement(result["peers"])
    result["summary"] = []
    for case in (case_name(b, k) for b, k in cases):
        for label, peer in result["peers"].items():
            stats = peer["cases"].get(case)
            if not stats:
                continue
            floor = result["floors"]["per_precision"][peer["precision"]]["cases"][case]
            result["summary"].append({
                "model": name, "peer": peer["peer"], "precision": peer["precision"], "case": case,
                "ms_per_token": _significant(stats["ms_per_token"]["median"]),
                "floor_ms_per_token": _significant(floor["ms_per_token"]),
                "ttft_ms": _significant(stats["ttft_ms"]["median"]),
                "floor_ttft_ms": _significant(floor["ttft_ms"]),
                "peak_rss_mb": round(peer["peak_rss_mb"], 1), "weights_mb": round(peer["weights_mb"], 1)})
    result["wall_s"] = round(time.time() - started, 1)
    _write_json(result, json_path)
    text = header(result) + "\n\n" + markdown_table(result)
    result["table_markdown"] = text
    print(text)
    _write_json(result, json_path)
    print(f"\nwrote {json_path}")
    if not args.no_plot:
        png_path = os.path.join(out_dir, stem + ".png")
        why = plot(result, png_path)
        print(f"wrote {png_path}" if why is None else f"no plot: {why}")
    os.remove(inputs_path)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m pali_engine.benchmarks.paligemma_full_size",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
