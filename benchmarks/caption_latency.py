"""End-to-end caption latency on the bundled model: the engine beside PyTorch.

Why: the number a user of ``Engine.load().generate(image, "caption en")`` sees
is the whole request (preprocessing, tokenizing, vision, encoder, the decode
loop until eos, detokenizing), not a forced-length decode step. This times
exactly that, one request at a time, on held-out shapes-world images, for

* ``engine f32`` / ``engine int8``: ``Engine.generate(image, prompt)``;
* ``pytorch``: the same request through ``export/model.py``'s cached
  ``Pali.generate`` (``TorchBackend``: the same preprocessing and tokenizer,
  under ``torch.inference_mode``), on the checkpoint the ONNX file was
  exported from.

Every peer gets the same threads and the same images, in rounds (all
requests through each peer in turn, ``--repeats`` rounds, so that a slower or
faster spell of the machine falls on all of them); the texts are compared
(the f32 engine must say what PyTorch says). Reported: median and min-max
latency per request (ms), mean generated tokens, and PyTorch's latency over
each engine row's.

    python -m pali_engine.benchmarks.caption_latency [--n 32] [--repeats 3] [--threads N] [--int8-kernel K]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

PROMPTS = ("caption en", "caption fr", "caption de", "caption es", "caption ru")


def _requests(n: int, image_size: int, seed: int):
    from pali_engine.export import data as D

    world = D.ShapesWorld(image_size=image_size, seed=seed)
    per = [world.heldout(f"caption_{p.split()[1]}", (n + len(PROMPTS) - 1) // len(PROMPTS)) for p in PROMPTS]
    out = []
    for i in range(n):
        ex = per[i % len(PROMPTS)][i // len(PROMPTS)]
        out.append((ex.image, ex.prompt))
    return out


def _time_peers(fns: Dict[str, object], requests, repeats: int) -> Dict[str, Dict]:
    """Times every peer on every request, in rounds: each round runs the
    requests through one peer after the other, so a change in the machine's
    speed during the run (another tenant, the clock) falls on all peers alike.
    Each peer's block starts with an untimed request, so no peer pays for the
    one before it (its thread pool still spinning, its data in the caches)."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    texts: Dict[str, List[str]] = {name: [] for name in fns}
    for rep in range(repeats):
        for name, fn in fns.items():
            fn(*requests[0])  # warm-up
            for image, prompt in requests:
                t0 = time.perf_counter()
                text = fn(image, prompt)
                times[name].append((time.perf_counter() - t0) * 1e3)
                if rep == 0:
                    texts[name].append(text)
    return {name: {"median_ms": float(np.median(t)), "min_ms": float(np.min(t)), "max_ms": float(np.max(t)),
                   "texts": texts[name]} for name, t in times.items()}


def measure(model_path: Optional[str] = None, checkpoint: Optional[str] = None, n: int = 32,
            repeats: int = 3, threads: Optional[int] = None, dtypes=("float32", "int8"), seed: int = 0,
            log=None, int8_kernel: str = "auto") -> Dict:
    """Times the engine (each dtype) and PyTorch on ``n`` caption requests; see the module docstring.

    ``int8_kernel``: the engine's integer kernel for int8 ("auto": the best this CPU has)."""
    import torch
    from pali_engine import Engine
    from pali_engine._core import ops
    from pali_engine.engine import default_model_path
    from pali_engine.export.evaluate import DEFAULT_MODEL, TorchBackend

    log = log or (lambda s: None)
    threads = threads or os.cpu_count() or 1
    model_path = model_path or default_model_path()
    checkpoint = checkpoint or DEFAULT_MODEL
    torch.set_num_threads(threads)
    engines = {dt: Engine.load(model_path, dtype=dt, threads=threads) for dt in dtypes}
    requests = _requests(n, engines[dtypes[0]].config["image_size"], seed)
    torch_backend = TorchBackend(checkpoint)

    def torch_generate(image, prompt):
        with torch.inference_mode():
            return torch_backend.generate([image], [prompt])[0]

    fns = {f"engine {dt}": (lambda im, p, e=engine: e.generate(im, p).text) for dt, engine in engines.items()}
    fns["pytorch"] = torch_generate
    log(f"[caption] {', '.join(fns)}: {n} requests x {repeats} rounds ...")
    try:
        ops.set_int8_kernel(int8_kernel)
        rows = _time_peers(fns, requests, repeats)
    finally:
        ops.set_int8_kernel("auto")
    tok = engines[dtypes[0]].tokenizer
    reference = rows["pytorch"]["texts"]
    for name, row in rows.items():
        row["same_text"] = int(sum(a == b for a, b in zip(row["texts"], reference)))
        row["mean_tokens"] = float(np.mean([len(tok.encode(t)) for t in row["texts"]]))  # eos included
        row["pytorch_over_this"] = rows["pytorch"]["median_ms"] / row["median_ms"]
    return {"model": os.path.basename(model_path), "checkpoint": os.path.basename(checkpoint),
            "requests": n, "repeats": repeats, "threads": threads, "prompts": list(PROMPTS),
            "int8_kernel": ops.int8_kernel() if int8_kernel == "auto" else int8_kernel,
            "rows": {k: {kk: vv for kk, vv in v.items() if kk != "texts"} for k, v in rows.items()},
            "examples": [{"prompt": p, "pytorch": reference[i], "engine": rows[f"engine {dtypes[0]}"]["texts"][i]}
                         for i, (_, p) in enumerate(requests[:5])]}


def table(result: Dict) -> str:
    lines = [f"**default, caption end to end** ({result['requests']} held-out images x {result['repeats']}, "
             f"batch 1, greedy until eos, prompts {', '.join(result['prompts'])}; image array in, text out; "
             f"{result['threads']} threads; int8 kernel {result.get('int8_kernel', '?')})",
             "",
             "| peer | ms per request | mean tokens | same text as PyTorch | PyTorch ms / this |",
             "|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['median_ms']:.2f} ({r['min_ms']:.2f}-{r['max_ms']:.2f}) | "
                     f"{r['mean_tokens']:.1f} | {r['same_text']}/{result['requests']} | "
                     f"{r['pytorch_over_this']:.2f}x |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pali-engine ONNX file (default: the bundled model)")
    ap.add_argument("--checkpoint", default=None, help="its PyTorch checkpoint (default: the bundled one)")
    ap.add_argument("--n", type=int, default=32, help="held-out images (default 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="threads for every peer (default: all cores)")
    ap.add_argument("--int8-kernel", default="auto",
                    help="the engine's integer kernel for int8: auto (the best this CPU has), avx2, avx512_vnni")
    ap.add_argument("--json", action="store_true", help="print the result as JSON after the table")
    args = ap.parse_args(argv)
    result = measure(args.model, args.checkpoint, args.n, args.repeats, args.threads,
                     log=lambda s: print(s, file=sys.stderr, flush=True), int8_kernel=args.int8_kernel)
    print(table(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
