"""Concurrent callers on one engine: throughput and latency beside onnxruntime and PyTorch.

Why: a server calls its engine from many threads at once. The engine's
scheduler steps every call in flight together (continuous batching), so more
callers should mean more answers per second at a bounded latency; PyTorch and
onnxruntime sessions shared by the same threads run each call on its own.
This measures it on the bundled model with caption requests on held-out
shapes-world images (``caption_latency``'s), for

* ``engine float32`` / ``engine int8``: one ``Engine`` shared by the callers;
* ``pytorch``: one ``export/model.py`` model (``TorchBackend``) shared by the
  callers, each call under ``torch.inference_mode``;
* ``onnxruntime``: one set of the split graphs (vision, encoder, decoder step
  with past keys and values: ``ort_graphs``) shared by the callers, each call
  forced to the length of the engine's answer (its search does not stop at
  eos), so that it does the same work.

For each number of callers C, every peer in turn (in rounds, so that the
machine's slower spells fall on all of them) runs ``n`` requests from C
threads that take the next request from a shared list. Reported per peer and
C: requests per second, median and p99 latency (ms), and the throughput over
the same peer's with one caller.

    python -m pali_engine.benchmarks.concurrency [--callers 1,2,4,8,16] [--n 64] [--repeats 3]
        [--threads N] [--peers engine,pytorch,onnxruntime] [--shield NICE] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .caption_latency import _requests


def run_callers(fn: Callable, requests: Sequence, callers: int) -> Dict:
    """Runs every request through ``fn`` from ``callers`` threads; latencies (ms) and wall time (s)."""
    latencies: List[float] = [0.0] * len(requests)
    next_index = [0]
    lock = threading.Lock()
    errors: List[BaseException] = []

    def worker():
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(requests):
                return
            start = time.perf_counter()
            try:
                fn(i, *requests[i])
            except BaseException as error:  # reported after the run
                errors.append(error)
                return
            latencies[i] = (time.perf_counter() - start) * 1e3

    threads = [threading.Thread(target=worker) for _ in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"latencies_ms": latencies, "wall_s": wall}


def summary(runs: List[Dict]) -> Dict:
    latencies = np.concatenate([r["latencies_ms"] for r in runs])
    per_round = [len(r["latencies_ms"]) / r["wall_s"] for r in runs]
    return {"requests_per_s": float(np.median(per_round)), "requests_per_s_min": float(min(per_round)),
            "requests_per_s_max": float(max(per_round)), "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "rounds": len(runs)}


def make_peers(names: Sequence[str], threads: int, requests, log) -> Dict[str, Callable]:
    """Each peer as fn(index, image, prompt), sharing one session among the callers."""
    from pali_engine import Engine

    peers: Dict[str, Callable] = {}
    engines = {}
    if "engine" in names:
        for dtype in ("float32", "int8"):
            engine = engines[dtype] = Engine.load(dtype=dtype, threads=threads)
            peers[f"engine {dtype}"] = (lambda i, image, prompt, e=engine: e.generate(image, prompt))
    reference = engines.get("float32") or Engine.load(threads=threads)
    # The engine's answer lengths, which the onnxruntime peer is forced to.
    lengths = [len(reference.generate(image, prompt).tokens) for image, prompt in requests]
    if "pytorch" in names or "onnxruntime" in names:
        import torch
        from pali_engine.export.evaluate import DEFAULT_MODEL, TorchBackend

        torch.set_num_threads(threads)
        torch_backend = TorchBackend(DEFAULT_MODEL)
    if "pytorch" in names:
        def torch_generate(i, image, prompt):
            with torch.inference_mode():
                return torch_backend.generate([image], [prompt])[0]

        peers["pytorch"] = torch_generate
    if "onnxruntime" in names:
        from . import ort_graphs

        folder = os.path.join(tempfile.gettempdir(), "pali-engine-bench-ort-default")
        if not ort_graphs.have_graphs(folder):
            log(f"[concurrency] exporting the split graphs to {folder} ...")
            ort_graphs.export_graphs(torch_backend.model, folder, log=log)
        generator = ort_graphs.OrtGenerator(folder, torch_backend.model.config, threads)
        backend = reference._backend
        inputs = []
        for image, prompt in requests:
            ids, mask = backend.encode_prompts([prompt])
            inputs.append((backend.pixel_values([image]), ids, mask))

        def ort_generate(i, image, prompt):
            pixels, ids, mask = inputs[i]
            return generator.generate(pixels, ids, mask, lengths[i])

        peers["onnxruntime"] = ort_generate
    return peers


def measure(callers: Sequence[int] = (1, 2, 4, 8, 16), n: int = 64, repeats: int = 3,
            threads: Optional[int] = None, peers: Sequence[str] = ("engine", "pytorch", "onnxruntime"),
            seed: int = 0, log=None) -> Dict:
    from pali_engine import Engine

    log = log or (lambda s: None)
    threads = threads or os.cpu_count() or 1
    image_size = Engine.load(threads=1).config["image_size"]
    requests = _requests(n, image_size, seed)
    fns = make_peers(peers, threads, requests, log)
    runs: Dict[str, Dict[int, List[Dict]]] = {name: {c: [] for c in callers} for name in fns}
    for rep in range(repeats):
        for c in callers:
            for name, fn in fns.items():
                fn(0, *requests[0])  # warm-up: no peer pays for the one before it
                runs[name][c].append(run_callers(fn, requests, c))
            log(f"[concurrency] round {rep + 1}/{repeats}, {c} callers: " + ", ".join(
                f"{name} {len(requests) / runs[name][c][-1]['wall_s']:.0f}/s" for name in fns))
    rows = {}
    for name in fns:
        rows[name] = {str(c): summary(runs[name][c]) for c in callers}
        one = rows[name][str(callers[0])]["requests_per_s"]
        for c in callers:
            row = rows[name][str(c)]
            row["throughput_over_one_caller"] = row["requests_per_s"] / one
            row["p99_over_p50"] = row["p99_ms"] / row["p50_ms"]
    return {"benchmark": "concurrency", "requests": n, "repeats": repeats, "threads": threads,
            "callers": list(callers), "rows": rows}


def table(result: Dict) -> str:
    lines = [f"{result['requests']} caption requests, {result['threads']} threads, median of "
             f"{result['repeats']} rounds", "",
             "| peer | callers | requests/s | vs 1 caller | p50 ms | p99 ms | p99/p50 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, per in result["rows"].items():
        for c, r in per.items():
            lines.append(f"| {name} | {c} | {r['requests_per_s']:.1f} | {r['throughput_over_one_caller']:.2f}x | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p99_over_p50']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pali_engine.benchmarks.concurrency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", default="1,2,4,8,16")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peers", default="engine,pytorch,onnxruntime")
    parser.add_argument("--shield", type=int, default=None, metavar="NICE",
                        help="run in an autogroup of this nice value (e.g. -15), away from other tenants' load")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    if args.shield is not None:
        from .harness import shield

        shield(args.shield)
    result = measure([int(c) for c in args.callers.split(",")], args.n, args.repeats, args.threads,
                     args.peers.split(","), log=lambda s: print(s, file=sys.stderr, flush=True))
    from .harness import report

    report(result, "concurrency", argv, table(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
