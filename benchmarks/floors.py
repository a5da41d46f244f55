"""What the machine can do at best, measured in the same run as the peers.

* read bandwidth: ``threads`` NumPy threads each summing its share of a 1 GiB
  float32 array (NumPy releases the GIL in the reduction), best of several;
* sgemm: NumPy (OpenBLAS) float32 matmul of 2048 x 2048, best of several.

From these the floors: a decode step must read the weights it uses once
(decoder + head; see models.parameter_counts), so ``ms/step >= bytes / bandwidth``;
prefill (vision, encoder) must do its matrix-product FLOPs, so
``ms >= FLOPs / sgemm rate``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict

import numpy as np

#: Bytes per weight as each precision stores it (int8 adds one float32 scale per output row,
#: negligible at these sizes and left out).
BYTES = {"f32": 4, "f16": 2, "int8": 1}


def read_bandwidth(threads: int, mib: int = 1024, repeats: int = 5) -> float:
    """GB/s (1e9 bytes) reading a ``mib`` MiB array with ``threads`` threads; the best of ``repeats``."""
    a = np.ones(mib * (1 << 20) // 4, np.float32)
    parts = np.array_split(a, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):  # the first pass warms the pages and the threads
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            dt = time.perf_counter() - t0
            best = max(best, a.nbytes / dt / 1e9)
    return best


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 n x n matmul (NumPy's BLAS, its own threads); the best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def measure(threads: int, quick: bool = False) -> Dict[str, float]:
    return {"read_bandwidth_gb_s": round(read_bandwidth(threads, mib=256 if quick else 1024), 2),
            "sgemm_gflop_s": round(sgemm_gflops(1024 if quick else 2048), 1),
            "sgemm_n": 1024 if quick else 2048, "threads": threads,
            "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")}


def floors(counts: Dict[str, int], flops: Dict[str, float], machine: Dict[str, float], case) -> Dict:
    """Floors of one case: ms per decode step by weight precision, vision/encoder/ttft ms, tokens/s."""
    bw = machine["read_bandwidth_gb_s"] * 1e9
    rate = machine["sgemm_gflop_s"] * 1e9
    step = {p: counts["decode_step"] * b / bw * 1e3 for p, b in BYTES.items()}
    B = case.batch
    vision = flops["vision"] * B / rate * 1e3
    encoder = flops["encoder"] * B / rate * 1e3
    cross = flops["cross_kv"] * B / rate * 1e3
    ttft = vision + encoder + cross + step["f32"]
    total = ttft + (case.new_tokens - 1) * step["f32"]
    return {"step_ms": step, "vision_ms": vision, "encoder_ms": encoder, "ttft_ms": ttft,
            "total_ms": total, "tokens_per_s": B * case.new_tokens / total * 1e3,
            "decode_step_weight_bytes_f32": counts["decode_step"] * 4}
