"""The process that times one peer's caption requests for benchmarks/contention.py.

Why a process per peer: two builds of the engine cannot share one process (their
native modules clash), and each peer's threads (the engine's pool, OpenMP's
teams, PyTorch's and onnxruntime's own) should meet only the load the
benchmark puts beside them, not each other's spinning.

Started as ``python [-S] latency_worker.py PEER DTYPE THREADS MODEL WORK_DIR
[PACKAGE_DIR SITE_DIR...]``: PEER is ``engine`` (the ``pali_engine`` on the
path, or the one in PACKAGE_DIR, first on the path, when given; ``-S`` then
keeps an editable install's hook from importing the current build),
``pytorch`` or ``onnxruntime``. It reads pickled requests on stdin and writes
pickled replies on the stdout it was started with (what a library prints goes
to stderr):

    {"op": "load", "requests": [(image, prompt), ...]}  -> {"ok": True, "module": ...}
    {"op": "time", "from_thread": bool}   -> {"ok": True, "ms": [...], "texts": [...]}
    {"op": "exit"}

A "time" runs one untimed request and then every request once, each timed
from the image array in to the text out, on the main thread or, with
``from_thread``, on a thread that the worker keeps for all such calls (as a
server's executor thread calls the engine).
"""

import os
import pickle
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

try:
    from .baseline_worker import die_with_parent, private_replies, put_package_first
except ImportError:  # run as a script (how the harness starts it): its folder is on the path
    from baseline_worker import die_with_parent, private_replies, put_package_first


def _engine(dtype: str, threads: int, model: str):
    from pali_engine import Engine

    engine = Engine.load(model, dtype=dtype, threads=threads)
    return lambda image, prompt: engine.generate(image, prompt).text


def _pytorch(threads: int):
    import torch
    from pali_engine.export.evaluate import TorchBackend

    torch.set_num_threads(threads)
    backend = TorchBackend()

    def generate(image, prompt):
        with torch.inference_mode():
            return backend.generate([image], [prompt])[0]

    return generate


def _onnxruntime(threads: int, model: str, work_dir: str):
    """onnxruntime on the vision, encoder and past-KV decoder graphs of the same weights
    (benchmarks/ort_graphs.py), greedy until eos, with the same preprocessing and tokenizer."""
    from pali_engine.benchmarks import models, ort_graphs
    from pali_engine.export.evaluate import encode_prompts
    from pali_engine.image import preprocess_batch
    from pali_engine.tokenizer import Tokenizer

    art = models.prepare("default", work_dir, model_path=model, log=lambda s: print(s, file=sys.stderr))
    if not ort_graphs.have_graphs(art.ort_folder):
        torch_model = models.load_torch_model(art.state_dict_path, art.config, keep=None)
        ort_graphs.export_graphs(torch_model, art.ort_folder, log=lambda s: print(s, file=sys.stderr))
    cfg = art.config
    generator = ort_graphs.OrtGenerator(art.ort_folder, cfg, threads)
    tokenizer = Tokenizer(art.tokenizer, pad_id=cfg.pad_token_id, eos_id=cfg.eos_token_id)

    def generate(image, prompt):
        pixels = preprocess_batch([image], cfg.image_size, cfg.image_mean, cfg.image_std, cfg.resample)
        ids, mask = encode_prompts(tokenizer, [prompt], cfg.max_prompt_tokens)
        out = generator.generate(pixels, ids, mask, cfg.max_new_tokens, stop_at_eos=True)
        return tokenizer.decode(out["tokens"][0].tolist())

    return generate


def _time_all(generate, requests):
    generate(*requests[0])  # untimed: the pool awake, the caches warm, as for every peer
    ms, texts = [], []
    for image, prompt in requests:
        start = time.perf_counter()
        texts.append(generate(image, prompt))
        ms.append((time.perf_counter() - start) * 1e3)
    return ms, texts


def serve(peer, dtype, threads, model, work_dir, requests_in, replies):
    generate, requests = None, None
    executor = ThreadPoolExecutor(1, thread_name_prefix="request")
    while True:
        try:
            request = pickle.load(requests_in)
        except EOFError:
            return
        op = request.get("op")
        if op == "exit":
            return
        try:
            if op == "load":
                requests = request["requests"]
                if peer == "engine":
                    generate = _engine(dtype, threads, model)
                elif peer == "pytorch":
                    generate = _pytorch(threads)
                elif peer == "onnxruntime":
                    generate = _onnxruntime(threads, model, work_dir)
                else:
                    raise ValueError(f"unknown peer {peer!r}")
                import pali_engine

                reply = {"ok": True, "module": os.path.dirname(pali_engine.__file__)}
            elif op == "time":
                if request.get("from_thread"):
                    ms, texts = executor.submit(_time_all, generate, requests).result()
                else:
                    assert threading.current_thread() is threading.main_thread()
                    ms, texts = _time_all(generate, requests)
                reply = {"ok": True, "ms": ms, "texts": texts}
            else:
                reply = {"error": f"unknown request {op!r}"}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def main(argv) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    peer, dtype, threads, model, work_dir = argv[:5]
    package_dir, site_dirs = (argv[5], argv[6:]) if len(argv) > 5 else (None, [])
    if package_dir:
        put_package_first(package_dir, site_dirs)
    serve(peer, dtype, int(threads), model, work_dir, sys.stdin.buffer, private_replies())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
