"""``pali-engine serve``: load one model and serve it over HTTP (FastAPI on uvicorn).

    pali-engine serve                              # the bundled model on http://127.0.0.1:8000/
    pali-engine serve --model m.onnx --dtype int8 --port 9000 --parallel 16 --max-queue 32
    pali-engine serve --ray --replicas 2 --threads 1   # N replicas on Ray Serve (pali_engine/serving.py)

Why a subcommand module of its own: fastapi and uvicorn are the ``serve``
extra, imported only when the server runs, so the rest of the command line
works on the runtime install.
"""

from __future__ import annotations

import argparse
import os
import sys

from .images import ImageLimits

SERVE_INSTALL_HINT = 'pip install fastapi "uvicorn[standard]"'
RAY_INSTALL_HINT = 'pip install "ray[serve]"'


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..backends import backend_names
    from ..dtypes import DTYPES

    defaults = ImageLimits()
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="an ONNX model file (default: the bundled model)")
    model.add_argument("--model-name", help="the model's id in the API (default: the file's name without .onnx)")
    model.add_argument("--backend", default="native", choices=backend_names())
    model.add_argument("--dtype", default=None, choices=DTYPES,
                       help="weight storage of the native engine (default: the file's own when it is "
                            "quantized, else float32)")
    model.add_argument("--threads", type=_count(1), default=None, help="CPU threads per engine call (default: all)")
    model.add_argument("--resize", default=None, choices=("pad", "stretch"),
                       help="how a non-square image becomes square (default: the model's convention)")
    model.add_argument("--vae", metavar="vae-oid.npz",
                       help="PaliGemma: big_vision's mask decoder weights, to return segmentation masks")
    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    http.add_argument("--port", type=_count(0), default=8000)
    http.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    limits = parser.add_argument_group("limits")
    limits.add_argument("--parallel", type=_count(1), default=16,
                        help="engine calls in flight at once; the engine steps them together (default: 16)")
    limits.add_argument("--max-batch", type=_count(1), default=8,
                        help="waiting requests with the same options go in as one call of at most this many")
    limits.add_argument("--max-queue", type=_count(0), default=64,
                        help="requests that wait for an engine call; past that: 429 (default: 64)")
    limits.add_argument("--max-request-bytes", type=_count(1), default=32 * 1024 * 1024)
    limits.add_argument("--max-image-bytes", type=_count(1), default=defaults.max_bytes,
                        help="an encoded image's bytes (default: 20 MiB)")
    limits.add_argument("--max-image-pixels", type=_count(1), default=defaults.max_pixels,
                        help="a decoded image's width x height (default: 40 M)")
    limits.add_argument("--max-new-tokens-limit", type=_count(1), default=1024,
                        help="the most tokens a request may ask for (default: 1024)")
    limits.add_argument("--max-beams", type=_count(1), default=16,
                        help="the most beams or returned sequences of a request (default: 16)")
    limits.add_argument("--image-url-hosts", default="", metavar="HOST[:PORT],...",
                        help="hosts whose http(s) image URLs are fetched (\"*\": any); default: none, "
                             "images come as data: URLs")
    limits.add_argument("--image-url-timeout", type=float, default=defaults.url_timeout_s,
                        help="seconds a URL fetch may take in all (default: 10)")
    ray_group = parser.add_argument_group("Ray Serve (the limits above are each replica's)")
    ray_group.add_argument("--ray", action="store_true",
                           help="serve through Ray Serve: replicas of one engine each")
    ray_group.add_argument("--replicas", type=_count(1), default=1, help="replicas (default: 1)")
    ray_group.add_argument("--ray-address", default=None,
                           help="the cluster to join, host:port of its head (default: RAY_ADDRESS, else the "
                                "cluster `ray start` began on this node, else a new local one)")
    ray_group.add_argument("--replica-cpus", type=float, default=1, help="CPUs Ray reserves per replica (default: 1)")
    ray_group.add_argument("--replica-gpus", type=float, default=0, help="GPUs Ray reserves per replica (default: 0)")


def run(args: argparse.Namespace) -> int:
    if args.ray:
        return _run_on_ray(args)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as error:
        print(f"pali-engine serve: the package {error.name!r} is not installed; install what it needs with: "
              f"{SERVE_INSTALL_HINT}", file=sys.stderr)
        return 1
    from ..engine import Engine, default_model_path
    from ..segmentation import MaskDecoder
    from .images import image_limits
    from .service import ServerSettings

    path = args.model or default_model_path()
    engine = Engine.load(path, backend=args.backend, dtype=args.dtype, threads=args.threads, resize=args.resize)
    decoder = MaskDecoder.load(args.vae) if args.vae else None
    name = args.model_name or os.path.splitext(os.path.basename(path))[0]
    settings = ServerSettings(
        model_id=name, parallel=args.parallel, max_batch=args.max_batch, max_queue=args.max_queue,
        max_request_bytes=args.max_request_bytes, max_new_tokens_limit=args.max_new_tokens_limit,
        max_beams=args.max_beams,
        images=image_limits(args.max_image_bytes, args.max_image_pixels, args.image_url_hosts,
                            args.image_url_timeout))
    app = create_app(engine, settings, decoder)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"pali-engine serve: {name} ({engine.backend}, {engine.dtype}) on http://{shown_host}:{args.port}/",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    except KeyboardInterrupt:  # uvicorn stops gracefully on Ctrl-C, then raises it again
        pass
    return 0


def _run_on_ray(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401 (each replica runs the same FastAPI application)

        from ..serving import run_from_args
    except ImportError as error:
        print(f"pali-engine serve --ray: the package {error.name!r} is not installed; install what it needs with: "
              f"{RAY_INSTALL_HINT}", file=sys.stderr)
        return 1
    return run_from_args(args)
