"""The process that runs another build of the engine for ``pali-engine bench --baseline``.

Two builds' native ``_core`` modules cannot share one process, so the harness
starts this file as a script, ``python -S baseline_worker.py PACKAGE_DIR
SITE_DIR...``, and drives it over a pipe: its stdin carries pickled requests,
the stdout it was started with carries pickled replies (anything else the
build prints goes to stderr).  ``-S`` keeps the ``.pth`` hook of an editable
install from importing the current build; the package folder comes first on
the path, the site-packages folders (NumPy and the other runtime
dependencies) after it.

This file imports nothing from the harness nor from the current build: it
runs the baseline's ``pali_engine`` only, through the lowest API that both
builds share, so both do the same work on the same arrays:

    NativeBackend(path, dtype=..., threads=...)._search(pixel_values, input_ids,
                                                        attention_mask, options, None)

(with ``generation.parse_options``), timed as the current engine's
``generate_ms`` is.  A build without that API falls back to
``Engine.load(...).generate(images, prompts, ...)``, as the engine peer calls.

Requests (dicts): ``{"op": "load", "model", "dtype", "threads"}`` -> a handle,
``{"op": "run", "handle", "inputs", "case"}`` -> the per-call result dict of
the engine peer (vision_ms, encoder_ms, ttft_ms, total_ms, steps, tokens,
scores), ``{"op": "unload", "handle"}``, ``{"op": "exit"}``.  Replies:
``{"ok": True, ...}`` or ``{"error": str, "traceback": str}``.

The worker ends with the harness: at the end of its stdin (the harness closed
it, or died), and on Linux also by a parent-death signal.  It ignores SIGINT:
a Ctrl-C reaches the harness, which closes the worker.
"""

import os
import pickle
import signal
import sys
import time
import traceback


def die_with_parent() -> None:
    """SIGTERM when the harness dies, even if it was killed while this process was computing."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: the end of stdin still ends the worker
        pass


def _import_baseline(package_dir: str):
    import pali_engine

    _check_origin(package_dir)
    return pali_engine


def _check_origin(package_dir: str) -> None:
    """Every pali_engine module loaded so far comes from the baseline's folder (a package may
    redirect its own imports, e.g. to an installed copy when its folder has no native module)."""
    root = os.path.realpath(package_dir) + os.sep
    for name, module in list(sys.modules.items()):
        if name == "pali_engine" or name.startswith("pali_engine."):
            where = getattr(module, "__file__", None)
            if where and not os.path.realpath(where).startswith(root):
                raise ImportError(f"{name} was imported from {where}, not from the baseline's folder {package_dir}")


class Model:
    """One loaded baseline model and how it is called."""

    def __init__(self, pali_engine, model: str, dtype: str, threads: int):
        try:
            from pali_engine.generation import parse_options
            from pali_engine.native_backend import NativeBackend
        except ImportError:
            NativeBackend = None
        if NativeBackend is not None and hasattr(NativeBackend, "_search"):
            self.backend = NativeBackend(model, dtype=dtype, threads=threads)
            self.parse_options = parse_options
            self.call = "NativeBackend._search on prepared arrays"
        else:
            self.engine = pali_engine.Engine.load(model, dtype=dtype, threads=threads)
            self.backend = None
            self.call = "Engine.generate on images and prompts"

    def run(self, inputs: dict, case: dict) -> dict:
        options = {"max_new_tokens": case["new_tokens"], "min_new_tokens": case["new_tokens"],
                   "num_beams": case["beams"]}
        if self.backend is None:
            results = self.engine.generate(inputs["images"], inputs["prompts"], **options)
            t = results[0].timings
            total = t["generate_ms"]
            tokens = [list(r.tokens) for r in results]
            scores = [float(r.score) for r in results]
        else:
            parsed = self.parse_options(options, self.backend.config)
            start = time.perf_counter()
            hypotheses, t = self.backend._search(inputs["pixel_values"], inputs["input_ids"],
                                                 inputs["attention_mask"], parsed, None)
            total = (time.perf_counter() - start) * 1e3
            tokens = [list(per_input[0].tokens) for per_input in hypotheses]
            scores = [float(per_input[0].score) for per_input in hypotheses]
        return {"vision_ms": t["vision_ms"], "encoder_ms": t["encoder_ms"],
                "ttft_ms": total - t["decode_ms"] + t["first_token_ms"], "total_ms": total,
                "steps": int(t["steps"]), "tokens": tokens, "scores": scores}


def serve(requests, replies, package_dir: str) -> None:
    pali_engine = None
    models = {}
    next_handle = 0
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        op = request.get("op")
        if op == "exit":
            return
        try:
            if op == "load":
                if pali_engine is None:
                    pali_engine = _import_baseline(package_dir)
                start = time.perf_counter()
                model = Model(pali_engine, request["model"], request["dtype"], request["threads"])
                _check_origin(package_dir)
                next_handle += 1
                models[next_handle] = model
                reply = {"ok": True, "handle": next_handle, "call": model.call,
                         "load_s": time.perf_counter() - start,
                         "version": getattr(pali_engine, "__version__", None),
                         "module": os.path.dirname(pali_engine.__file__)}
            elif op == "run":
                reply = {"ok": True, "result": models[request["handle"]].run(request["inputs"], request["case"])}
            elif op == "unload":
                models.pop(request["handle"], None)
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown request {op!r}"}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def put_package_first(package_dir: str, site_dirs) -> None:
    """The package in `package_dir` first on the path, this file's own folder (the harness's
    modules) off it, `site_dirs` last."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [package_dir] + [p for p in sys.path if p and os.path.abspath(p) != here] + list(site_dirs)


def private_replies():
    """Replies go on a private copy of stdout; fd 1 becomes stderr, so prints cannot corrupt them."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


def main(argv) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    package_dir, site_dirs = argv[0], argv[1:]
    put_package_first(package_dir, site_dirs)
    serve(sys.stdin.buffer, private_replies(), package_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
