"""Kernel sandbox: the CPU linear op against numpy matmul (OpenBLAS) and
torch's bfloat16 matmul (oneDNN, when torch is installed).

Times y = x @ W.T + b for decode (m = 1, 4) and prefill (m = 256) on a few
weight shapes (the "pali" base size's and PaliGemma 2 3B's) in every weight
format once per float kernel this CPU runs (avx2, avx512, avx512_bf16, ...),
int8 with int8 activations (W8A8) once per integer kernel, and prints GFLOP/s
(GOP/s for W8A8) and the weight read rate (GB/s: packed weight bytes / time;
the number that matters for decode). The rows of one shape and m run one
after another, so compare them as ratios.
Then attention at ViT/T5 sizes against torch's scaled_dot_product_attention
(when torch is installed).

    python benchmarks/kernels_cpu.py [--threads 2] [--reps 20] [--quick] [--no-attention]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from pali_engine._core import ops

SHAPES = {  # name: (N, K)
    "768x768": (768, 768),
    "ffn wi 4096x768": (2 * 2048, 768),
    "lm_head 32128x768": (32128, 768),
    "siglip fc1 4304x1152": (4304, 1152),
    "gemma2 gate_up 18432x2304": (18432, 2304),
    "gemma2 down 2304x9216": (2304, 9216),
}
#: --quick's shapes.
QUICK_SHAPES = ("768x768", "gemma2 down 2304x9216")


def best_time(fn, reps: int, budget_s: float = 1.5) -> float:
    fn()  # warm up
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return float(np.min(times))  # the least disturbed run: the machine is shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="two shapes, m=1 and m=256, f32, bf16 and i4 only")
    ap.add_argument("--no-attention", action="store_true", help="skip the attention timings")
    args = ap.parse_args()
    ops.set_threads(args.threads)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    rng = np.random.default_rng(0)
    ms = [1, 256] if args.quick else [1, 4, 256]
    fmts = ["f32", "bf16", "i4"] if args.quick else ["f32", "f16", "bf16", "i8", "i4", "i4_g128"]
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    print(f"threads={args.threads}  (numpy: {np.__version__}, BLAS threads from OPENBLAS_NUM_THREADS)")
    print(f"{'weight':<27}{'m':>5}  {'impl':<20}{'ms':>9}{'GFLOP/s':>10}{'GB/s':>8}")
    for name, (n, k) in SHAPES.items():
        if args.quick and name not in QUICK_SHAPES:
            continue
        w = rng.standard_normal((n, k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        prepared = {f: ops.prepare_linear(w, b, f) for f in fmts}
        w8a8 = ops.prepare_linear(w, b, "i8", int8_activations=True)
        wt = np.ascontiguousarray(w.T)
        for m in ms:
            x = rng.standard_normal((m, k)).astype(np.float32)
            flops = 2.0 * m * n * k
            y = np.empty((m, n), np.float32)
            rows = []
            t = best_time(lambda: np.add(x @ wt, b, out=y), args.reps)
            rows.append(("numpy", t, w.nbytes))
            if torch is not None:
                tw, tx, tb = (torch.from_numpy(a).bfloat16() for a in (w, x, b))
                t = best_time(lambda: torch.nn.functional.linear(tx, tw, tb), args.reps)
                rows.append(("torch bf16", t, w.nbytes // 2))
            for f in fmts:
                lw = prepared[f]
                for kernel in ops.linear_kernels_available():
                    if kernel == "portable" or (kernel in ("avx512_bf16", "amx") and f not in ("bf16", "i4", "i4_g128")):
                        continue
                    ops.set_linear_kernel(kernel)
                    t = best_time(lambda: ops.linear(x, lw, out=y), args.reps)
                    rows.append((f"{f} {kernel}", t, lw.weight_bytes))
                ops.set_linear_kernel("auto")
            for kernel in ops.int8_kernels_available():
                ops.set_int8_kernel(kernel)
                t = best_time(lambda: ops.linear(x, w8a8, out=y), args.reps)
                rows.append((f"w8a8 {kernel}", t, w8a8.weight_bytes))
            ops.set_int8_kernel("auto")
            for impl, t, nbytes in rows:
                print(f"{name:<27}{m:>5}  {impl:<20}{t * 1e3:>9.3f}{flops / t / 1e9:>10.1f}{nbytes / t / 1e9:>8.1f}")
    if not args.no_attention:
        bench_attention(args.threads, args.reps)


def bench_attention(threads: int, reps: int) -> None:
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(1)
    print(f"\n{'attention':<34}{'ms':>9}{'GFLOP/s':>10}{'torch ms':>10}")
    cases = [  # name, batch (queries), kv batch, q_len, kv_len, heads, head_dim
        ("ViT 256x256, 12x64", 1, 1, 256, 256, 12, 64),
        ("T5 enc 300x300, 12x64", 1, 1, 300, 300, 12, 64),
        ("decode 4 seqs x 300 keys", 4, 4, 1, 300, 12, 64),
        ("decode 4 beams share 300 keys", 4, 1, 1, 300, 12, 64),
    ]
    for name, b, bk, lq, lk, h, d in cases:
        q = rng.standard_normal((b, lq, h * d)).astype(np.float32)
        k = rng.standard_normal((bk, lk, h * d)).astype(np.float32)
        v = rng.standard_normal((bk, lk, h * d)).astype(np.float32)
        t = best_time(lambda: ops.attention(q, k, v, h, d, 1 / np.sqrt(d), kv_batch_divisor=b // bk), reps)
        flops = 4.0 * b * h * lq * lk * d
        tt = float("nan")
        if torch is not None:
            tq = torch.from_numpy(q).view(b, lq, h, d).transpose(1, 2)
            tk = torch.from_numpy(np.repeat(k, b // bk, 0)).view(b, lk, h, d).transpose(1, 2)
            tv = torch.from_numpy(np.repeat(v, b // bk, 0)).view(b, lk, h, d).transpose(1, 2)
            tt = best_time(lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv), reps)
        print(f"{name:<34}{t * 1e3:>9.3f}{flops / t / 1e9:>10.1f}{tt * 1e3:>10.3f}")


if __name__ == "__main__":
    main()
