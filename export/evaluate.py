"""Held-out evaluation of a PaLI model on the shapes world.

Why: the accuracy per task of the default model is how pali-engine shows that
a backend (PyTorch, onnxruntime, the C++ engine) runs the model correctly.

    pali-engine eval [--model PATH] [--backend engine|onnxruntime|torch] [--n N] [--json]
    python -m export.evaluate --n 200 --json

The default backend is the engine, which the runtime install has (a .pt
checkpoint of your own defaults to the torch backend, which needs PyTorch). Task names (``--tasks``) are the prompts' first words
joined by ``_``: ``caption_en`` is the task of the prompt ``caption en``,
``answer_en`` of ``answer en <question>``.

Metrics: exact match of the greedy output for captions, answers and OCR;
mean IoU for detection (see ``data.detection_ious``: ground-truth boxes are
matched one to one to predicted boxes with the same label, greedily by IoU,
and the IoUs are averaged over all ground-truth boxes; a missed box counts 0).
With ``--json`` the last line printed is one JSON object
``{task: {"n": ..., "score": ..., "metric": ...}}``.

A backend is any object with ``generate(images, prompts, max_new_tokens) ->
list[str]``; only the torch backend needs PyTorch (imported lazily).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import data as D

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default", "pali-default.pt")


class TorchBackend:
    """Greedy generation with the PyTorch model (export/model.py) and its tokenizer."""

    def __init__(self, model_path: str = DEFAULT_MODEL, device: str = "cpu",
                 tokenizer_path: Optional[str] = None, model=None, tokenizer=None):
        import torch  # noqa: F401  (lazy: the runtime install has no torch)
        from .model import Pali
        from pali_engine.tokenizer import Tokenizer

        self.device = device
        if model is None:
            if not os.path.exists(model_path):
                raise ValueError(f"model checkpoint not found: {model_path}")
            model = Pali.load(model_path)
        self.model = model.to(device).eval()
        if tokenizer is None:
            tokenizer_path = tokenizer_path or os.path.join(os.path.dirname(os.path.abspath(model_path)),
                                                            "tokenizer.model")
            tokenizer = Tokenizer(tokenizer_path)
        self.tokenizer = tokenizer
        self.config = self.model.config

    def generate(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 max_new_tokens: Optional[int] = None, num_beams: int = 1) -> List[str]:
        import torch
        from pali_engine.image import preprocess_batch

        cfg = self.config
        px = torch.from_numpy(preprocess_batch(list(images), cfg.image_size, cfg.image_mean,
                                               cfg.image_std, cfg.resample)).to(self.device)
        ids, mask = encode_prompts(self.tokenizer, prompts, cfg.max_prompt_tokens)
        ids, mask = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
        toks, _ = self.model.generate(px, ids, mask, max_new_tokens or cfg.max_new_tokens, num_beams=num_beams)
        return [self.tokenizer.decode(t) for t in toks.tolist()]


def encode_prompts(tokenizer, prompts: Sequence[str], max_len: int):
    """Prompts -> (ids i64[B,L], mask i64[B,L]), eos-terminated, truncated to
    max_len (keeping the final eos), right-padded with pad."""
    seqs = []
    for p in prompts:
        s = tokenizer.encode(p)
        if len(s) > max_len:
            s = s[:max_len - 1] + [tokenizer.eos_id]
        seqs.append(s)
    L = max(len(s) for s in seqs)
    ids = np.full((len(seqs), L), tokenizer.pad_id, np.int64)
    mask = np.zeros((len(seqs), L), np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def make_backend(name: str, model_path: str, device: str = "cpu", dtype: str = "float32"):
    """``dtype``: the engine's weight storage (pali_engine.dtypes); the torch and onnxruntime
    backends run float32 only."""
    if name == "torch":
        if dtype != "float32":
            raise ValueError(f"the torch backend runs float32; --dtype {dtype} is for --backend engine")
        return TorchBackend(model_path, device=device)
    if name in ("onnxruntime", "engine"):
        from pali_engine.backend import EvalBackend

        return EvalBackend("native" if name == "engine" else name, model_path, device=device, dtype=dtype)
    raise ValueError(f"unknown backend {name!r}")


def score(task: str, preds: Sequence[str], examples: Sequence[D.Example]) -> float:
    if task == "detect":
        ious: List[float] = []
        for p, ex in zip(preds, examples):
            ious.extend(D.detection_ious(p, ex.target, ex.image.shape[0]))
        return float(np.mean(ious)) if ious else 0.0
    return float(np.mean([p.strip() == ex.target for p, ex in zip(preds, examples)]))


def evaluate(backend, tasks: Sequence[str] = D.TASKS, n: int = 200, batch_size: int = 100,
             image_size: int = 64, seed: int = 0, max_new_tokens: Optional[int] = None,
             log=None, samples: int = 0) -> Dict[str, dict]:
    """Score ``backend`` on the first ``n`` held-out examples of each task."""
    world = D.ShapesWorld(image_size=image_size, seed=seed)
    results = {}
    for task in tasks:
        exs = world.heldout(task, n)
        preds: List[str] = []
        for i in range(0, n, batch_size):
            chunk = exs[i:i + batch_size]
            preds += backend.generate([e.image for e in chunk], [e.prompt for e in chunk], max_new_tokens)
        results[task] = {"n": n, "score": round(score(task, preds, exs), 4), "metric": D.TASK_METRIC[task]}
        if log is not None:
            log(f"  {task:11s} {results[task]['metric']:11s} {results[task]['score']:.4f}")
            for e, p in list(zip(exs, preds))[:samples]:
                log(f"    {e.prompt!r} -> {p!r} (target {e.target!r})")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="an ONNX file, or a .pt checkpoint for the torch backend (default: the bundled model)")
    parser.add_argument("--backend", default=None, choices=["engine", "onnxruntime", "torch"],
                        help="engine: the native engine (the default, except for a .pt checkpoint of your "
                             "own: torch); onnxruntime; torch: the PyTorch model")
    parser.add_argument("--n", type=int, default=200, help="held-out examples per task")
    parser.add_argument("--tasks", default=",".join(D.TASKS),
                        help=f"comma-separated task names, from {', '.join(D.TASKS)} (caption_en is the task "
                             "of the prompt 'caption en')")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    from pali_engine.dtypes import DTYPES

    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="weight storage of the engine backend")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--samples", type=int, default=0, help="print this many predictions per task")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line last")


def default_backend(model_path: str) -> str:
    """The engine, which every install has, unless the model is a checkpoint only PyTorch reads
    (a .pt file other than the bundled model's, which the engine runs from its ONNX file)."""
    is_own_checkpoint = (str(model_path).endswith(".pt")
                         and os.path.basename(str(model_path)) != os.path.basename(DEFAULT_MODEL))
    return "torch" if is_own_checkpoint else "engine"


def run(args) -> int:
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in D.TASKS]
    if bad:
        print(f"error: unknown tasks {bad}; tasks are {list(D.TASKS)}", file=sys.stderr)
        return 2
    if args.backend is None:
        args.backend = default_backend(args.model)
    if args.threads and args.backend == "torch":
        import torch
        torch.set_num_threads(args.threads)
    try:
        backend = make_backend(args.backend, args.model, args.device, args.dtype)
    except (NotImplementedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = getattr(getattr(backend, "config", None), "image_size", 64)
    t0 = time.time()
    res = evaluate(backend, tasks, args.n, args.batch_size, image_size=size,
                   log=None if args.json else print, samples=args.samples)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"evaluated {len(tasks)} tasks x {args.n} examples in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(description="Evaluate a PaLI model on held-out shapes-world data.")
    add_arguments(_p)
    raise SystemExit(run(_p.parse_args()))
