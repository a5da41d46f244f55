"""Micro-benchmarks of the CUDA ops against PyTorch on the same device.

Each op runs through pali_engine._core_cuda.cuda_ops with ``iters``: the inputs
are copied to the device once, then every launch is timed alone with CUDA
events (after 3 warm-up launches); the median is reported. PyTorch's
counterpart (F.layer_norm, scaled_dot_product_attention, torch.matmul, ...)
is timed the same way on CUDA tensors, when PyTorch sees a CUDA device.
Results go to benchmarks/results/cuda_ops-<device>-<time>.json with the device
name, the command line and the library versions.

    python benchmarks/cuda_ops.py [--iters 50] [--quick] [--dtype bfloat16] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import re
import sys
from pathlib import Path

import numpy as np


def median_ms(times) -> float:
    return float(np.median(np.asarray(times, dtype=np.float64)))


def torch_timer(torch, fn, iters: int):
    """Median ms of fn() on the current CUDA stream, each call timed with events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return median_ms(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=50, help="timed launches per op (median reported)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/...)")
    args = ap.parse_args()

    from pali_engine import _native
    from pali_engine._version import __version__

    core = _native.core_for("cuda")
    if core.cuda_device_count() == 0:
        print("no CUDA device", file=sys.stderr)
        return 1
    cops = core.cuda_ops
    dev_name, cc, sms = cops.device_name()
    rt, drv, cublas = cops.runtime_versions()

    try:
        import torch

        has_torch = torch.cuda.is_available()
    except ImportError:
        torch, has_torch = None, False
    if has_torch:
        import torch.nn.functional as F

        tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
        torch.backends.cuda.matmul.allow_tf32 = False

    rng = np.random.default_rng(0)
    dt, iters = args.dtype, args.iters
    results = []

    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def cuda(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to("cuda", tdt)

    def record(op, shape, ours_times, torch_fn=None, bytes_moved=None, flops=None):
        ours = median_ms(ours_times)
        ref = torch_timer(torch, torch_fn, iters) if (has_torch and torch_fn is not None) else None
        row = {"op": op, "shape": shape, "dtype": dt, "ours_ms": ours, "torch_ms": ref,
               "speedup_vs_torch": (ref / ours) if ref else None,
               "ours_ms_p10_p90": [float(np.percentile(ours_times, 10)), float(np.percentile(ours_times, 90))]}
        if bytes_moved:
            row["ours_GBps"] = bytes_moved / ours / 1e6
        if flops:
            row["ours_TFLOPs"] = flops / ours / 1e9
        results.append(row)
        ref_s = f"{ref:9.4f}" if ref else "        -"
        print(f"{op:<22}{str(shape):<40}{ours:9.4f} ms  torch {ref_s} ms", flush=True)

    es = 4 if dt == "float32" else 2
    print(f"device: {dev_name} (cc {cc}, {sms} SMs); dtype {dt}; median of {iters} launches")

    # ---- norms and activations ------------------------------------------------------
    for m, d in ([(1024, 1152)] if args.quick else [(256, 768), (1024, 1152), (8192, 1152), (4096, 4096)]):
        x, g, b = randn(m, d), randn(d), randn(d)
        _, t = cops.layer_norm(x, g, b, 1e-6, dt, iters=iters)
        tf = None
        if has_torch:
            tx, tg, tb = cuda(x), cuda(g), cuda(b)
            tf = lambda: F.layer_norm(tx, (d,), tg, tb, 1e-6)  # noqa: E731
        record("layer_norm", [m, d], t, tf, bytes_moved=2 * m * d * es)

        delta, w = randn(m, d), randn(d)
        _, t = cops.add_rms_norm(x, delta, w, 1e-6, dt, dt, iters=iters)
        tf = None
        if has_torch:
            tr, td_, tw = cuda(x), cuda(delta), cuda(w)

            def tf():
                r = tr + td_
                var = r.float().pow(2).mean(-1, keepdim=True)
                return tw * (r.float() * torch.rsqrt(var + 1e-6)).to(tdt)
        record("add_rms_norm", [m, d], t, tf, bytes_moved=4 * m * d * es)

    for m, f in ([(1024, 4304)] if args.quick else [(256, 2048), (1024, 4304), (4096, 3072)]):
        x = randn(m, 2 * f)
        _, t = cops.gated_activation(x, "gelu_tanh", dt, iters=iters)
        tf = None
        if has_torch:
            tx = cuda(x)
            tf = lambda: F.gelu(tx[:, :f], approximate="tanh") * tx[:, f:]  # noqa: E731
        record("gated_gelu", [m, f], t, tf, bytes_moved=3 * m * f * es)

    # ---- linear ---------------------------------------------------------------------
    shapes = [(1, 768, 768), (8, 4096, 768), (256, 768, 768), (4096, 1152, 1152), (16, 32128, 768)]
    if args.quick:
        shapes = [(8, 4096, 768), (4096, 1152, 1152)]
    for m, n, k in shapes:
        x, w, b = randn(m, k), randn(n, k, scale=k**-0.5), randn(n)
        _, t = cops.linear(x, w, b, None, dt, iters=iters)
        tf = None
        if has_torch:
            tx, tw, tb = cuda(x), cuda(w), cuda(b)
            tf = lambda: torch.matmul(tx, tw.t()) + tb  # noqa: E731
        record("linear", [m, n, k], t, tf, bytes_moved=(m * k + n * k + m * n) * es, flops=2 * m * n * k)

    # ---- patch embedding ----------------------------------------------------------------
    for bsz, s, p, width in ([(8, 224, 14, 1152)] if args.quick else [(1, 224, 14, 1152), (8, 224, 14, 1152),
                                                                       (4, 448, 14, 1152)]):
        img = rng.integers(0, 256, size=(bsz, s, s, 3), dtype=np.uint8)
        mean = std = np.full(3, 0.5, np.float32)
        n = (s // p) ** 2
        w, b, pos = randn(width, 3 * p * p, scale=0.02), randn(width), randn(n, width)
        _, t = cops.patch_embed_u8(img, p, mean, std, w, b, pos, dt, iters=iters)
        tf = None
        if has_torch:
            timg = torch.from_numpy(img).to("cuda")
            tw, tb, tpos = cuda(w.reshape(width, 3, p, p)), cuda(b), cuda(pos)

            def tf():
                xx = ((timg.permute(0, 3, 1, 2).to(tdt) / 255.0) - 0.5) / 0.5
                return F.conv2d(xx, tw, tb, stride=p).flatten(2).transpose(1, 2) + tpos
        record("patch_embed_u8", [bsz, s, p, width], t, tf, flops=2 * bsz * n * width * 3 * p * p)

    # ---- attention --------------------------------------------------------------------------
    cases = [(8, 16, 256, 256, 72, False), (8, 12, 256, 256, 64, False), (4, 12, 1024, 1024, 64, False),
             (8, 8, 128, 128, 128, True), (16, 12, 32, 256, 64, False)]
    if args.quick:
        cases = [(8, 16, 256, 256, 72, False), (8, 8, 128, 128, 128, True)]
    for bsz, h, lq, lk, d, causal in cases:
        q, k, v = randn(bsz, lq, h * d), randn(bsz, lk, h * d), randn(bsz, lk, h * d)
        scale = 1 / math.sqrt(d)
        _, t = cops.attention(q, k, v, h, d, scale, causal=causal, dtype=dt, iters=iters)
        tf = None
        if has_torch:
            tq = cuda(q).view(bsz, lq, h, d).transpose(1, 2)
            tk = cuda(k).view(bsz, lk, h, d).transpose(1, 2)
            tv = cuda(v).view(bsz, lk, h, d).transpose(1, 2)
            tf = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, scale=scale)  # noqa: E731
        flops = 4 * bsz * h * lq * lk * d // (2 if causal else 1)
        record("attention" + ("_causal" if causal else ""), [bsz, h, lq, lk, d], t, tf, flops=flops)

    dcases = [(16, 12, 64, 64), (16, 12, 512, 64), (16, 12, 2048, 64), (4, 16, 4096, 128)]
    if args.quick:
        dcases = [(16, 12, 512, 64)]
    for bsz, h, lk, d in dcases:
        q = randn(bsz, 1, h * d)
        k, v = randn(bsz, lk, h * d), randn(bsz, lk, h * d)
        table = np.repeat(np.arange(bsz, dtype=np.int32)[:, None], lk, axis=1)
        _, t = cops.attention_decode(q, k, v, h, d, 1.0, causal=True, q_offset=lk - 1, kv_len=lk, kv_index=table,
                                     dtype=dt, iters=iters)
        tf = None
        if has_torch:
            tq = cuda(q).view(bsz, 1, h, d).transpose(1, 2)
            tk = cuda(k).view(bsz, lk, h, d).transpose(1, 2)
            tv = cuda(v).view(bsz, lk, h, d).transpose(1, 2)
            tf = lambda: F.scaled_dot_product_attention(tq, tk, tv, scale=1.0)  # noqa: E731
        record("attention_decode", [bsz, h, 1, lk, d], t, tf, bytes_moved=2 * bsz * lk * h * d * es)

    # ---- log_softmax + top-k --------------------------------------------------------------------
    for m, vocab, kk in ([(16, 257152, 8)] if args.quick else [(4, 32128, 8), (16, 257152, 8), (64, 32128, 64)]):
        x = randn(m, vocab, scale=3.0)
        _, t = cops.log_softmax_topk(x, kk, True, True, dt, iters=iters)
        tf = None
        if has_torch:
            tx = cuda(x)
            tf = lambda: torch.log_softmax(tx.float(), -1).topk(kk, -1)  # noqa: E731
        record("log_softmax_topk", [m, vocab, kk], t, tf, bytes_moved=m * vocab * (es + 4))

    versions = {"pali_engine": __version__, "cuda_runtime": rt, "cuda_driver": drv, "cublas": cublas,
                "numpy": np.__version__, "python": platform.python_version(),
                "torch": getattr(torch, "__version__", None) if torch else None,
                "torch_cuda": getattr(getattr(torch, "version", None), "cuda", None) if torch else None}
    report = {"benchmark": "cuda_ops", "device": {"name": dev_name, "compute_capability": cc, "multiprocessors": sms},
              "command": " ".join([sys.executable, *sys.argv]),
              "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "iters": iters, "versions": versions, "results": results}
    out = args.out
    if out is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path(__file__).resolve().parent / "results" / f"cuda_ops-{re.sub(r'[^A-Za-z0-9]+', '_', dev_name)}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
