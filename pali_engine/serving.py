"""Scale-out on Ray Serve: the server of ``pali-engine serve`` as a Ray Serve application of N replicas,
each holding one engine (needs ``pip install "ray[serve]"``).

    from ray import serve
    from pali_engine.serving import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app(num_replicas=2, threads=1), name="pali")

    # or from a shell, on a running cluster:
    serve run pali_engine.serving:app num_replicas=2 threads=1
    pali-engine serve --ray --replicas 2 --threads 1

Why Ray Serve and no cluster code of our own: Ray already places replicas on
the nodes that have the CPUs or GPUs asked for, restarts a replica that dies,
scales their number with the load and routes each request to a replica with
few requests in flight. Each replica mounts the very FastAPI application of
``pali_engine.server`` (``create_app``) as its ingress, so the routes, limits,
errors and metrics are those of a single ``pali-engine serve``; every answer
names the replica that made it in the ``x-pali-replica`` header (the
replica's Ray actor name). docs/serving.md describes single machines and
multi-node clusters.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

from ray import serve

from .server.service import ServerSettings

#: The Serve application's default name (``serve status`` and ``serve.delete`` use it).
APP_NAME = "pali"
#: The header that names the replica (its Ray actor name, in the ``serve`` namespace) of every answer.
REPLICA_HEADER = "x-pali-replica"


class _ReplicaHeader:
    """ASGI middleware adding the replica's name to each answer (pure ASGI, so streams pass untouched)."""

    def __init__(self, app, replica: str):
        self.app = app
        self.replica = replica.encode("latin-1")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_replica(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.replica)]}
            await send(message)

        await self.app(scope, receive, send_with_replica)


@serve.ingress()
class PaliEngineDeployment:
    """One replica: an engine loaded on the replica's node, behind ``create_app``'s FastAPI application."""

    def __init__(self, engine_options: Dict[str, Any], settings: ServerSettings, vae: Optional[str] = None):
        from .engine import Engine, default_model_path
        from .segmentation import MaskDecoder

        # Resolved here, not by the driver: the bundled model's path is the replica node's own install.
        options = dict(engine_options)
        options["path"] = options.get("path") or default_model_path()
        self.engine = Engine.load(**options)
        self.mask_decoder = MaskDecoder.load(vae) if vae else None
        self.settings = settings
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()

    def __serve_build_asgi_app__(self):
        # Serve calls this after __init__ and runs the app's lifespan, which closes the scheduler on shutdown.
        from .server.app import create_app

        app = create_app(self.engine, self.settings, self.mask_decoder)
        app.add_middleware(_ReplicaHeader, replica=self.replica)
        return app


def build_app(model: Optional[str] = None, *, model_name: Optional[str] = None, backend: str = "native",
              device: str = "cpu", dtype: Optional[str] = None, threads: Optional[int] = None,
              resize: Optional[str] = None, vae: Optional[str] = None, settings: Optional[ServerSettings] = None,
              num_replicas: Optional[int] = 1, autoscaling_config: Optional[Dict[str, Any]] = None,
              num_cpus: float = 1, num_gpus: float = 0, max_ongoing_requests: Optional[int] = None,
              deployment_options: Optional[Dict[str, Any]] = None):
    """The Ray Serve application (``serve.run(build_app(...))``).

    ``model`` is a path valid on every node (default: the bundled model of each node's install);
    ``threads`` are per engine call (default: ``num_cpus``, since Ray does not pin a replica to its
    CPUs and an engine on every core of the node would crowd the others); ``settings`` are each
    replica's own limits. ``num_replicas`` is fixed unless ``autoscaling_config`` is given
    (``{"min_replicas", "max_replicas", "target_ongoing_requests", ...}``, Serve's own keys).
    ``num_cpus`` and ``num_gpus`` are what Ray reserves for each replica (a GPU replica runs
    ``backend="ort", device="cuda"``: onnxruntime-gpu on the GPU Ray gave it); ``max_ongoing_requests``
    (default: the server's ``parallel + max_queue``, so its own 429 stays the limit) is what one
    replica is sent at once. ``deployment_options`` go to ``serve.deployment`` as they are
    (``health_check_period_s``, ``graceful_shutdown_timeout_s``, ...).
    """
    settings = settings or ServerSettings()
    if model_name is None:
        model_name = os.path.splitext(os.path.basename(model))[0] if model else settings.model_id
    settings = dataclasses.replace(settings, model_id=model_name)
    if threads is None:
        threads = max(1, int(num_cpus))
    engine_options = {"path": model, "backend": backend, "device": device, "dtype": dtype, "threads": threads,
                      "resize": resize}
    options: Dict[str, Any] = {
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": max_ongoing_requests or settings.parallel + settings.max_queue,
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = num_replicas
    options.update(deployment_options or {})
    deployment = serve.deployment(PaliEngineDeployment, name="PaliEngine", **options)
    return deployment.bind(engine_options, settings, vae)


#: ``serve run pali_engine.serving:app key=value ...`` keys, each with how its text becomes a value.
_BUILDER_KEYS = {
    "model": str, "model_name": str, "backend": str, "device": str, "dtype": str, "threads": int, "resize": str,
    "vae": str,
    "num_replicas": int, "min_replicas": int, "max_replicas": int, "target_ongoing_requests": float,
    "num_cpus": float, "num_gpus": float, "max_ongoing_requests": int,
    "parallel": int, "max_batch": int, "max_queue": int, "max_new_tokens_limit": int, "max_beams": int,
}
_AUTOSCALING_KEYS = ("min_replicas", "max_replicas", "target_ongoing_requests")
_SETTINGS_KEYS = ("parallel", "max_batch", "max_queue", "max_new_tokens_limit", "max_beams")


def app_builder(args: Dict[str, str]):
    """Serve's application builder: ``serve run pali_engine.serving:app num_replicas=2 threads=1``.

    Keys: those of ``build_app`` (``model``, ``dtype``, ``threads``, ``num_replicas``, ``num_cpus``,
    ``num_gpus``, ``max_ongoing_requests``, ...), the server's limits (``parallel``, ``max_batch``,
    ``max_queue``, ``max_new_tokens_limit``, ``max_beams``), and ``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests``, any of which turns on autoscaling.
    """
    unknown = sorted(set(args) - set(_BUILDER_KEYS))
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(_BUILDER_KEYS))}")
    values = {}
    for key, text in args.items():
        try:
            values[key] = _BUILDER_KEYS[key](text)
        except ValueError:
            raise ValueError(f"{key}={text!r} is not a {_BUILDER_KEYS[key].__name__}") from None
    autoscaling = {key: values.pop(key) for key in _AUTOSCALING_KEYS if key in values}
    settings = ServerSettings(**{key: values.pop(key) for key in _SETTINGS_KEYS if key in values})
    return build_app(values.pop("model", None), settings=settings, autoscaling_config=autoscaling or None, **values)


#: The name ``serve run pali_engine.serving:app`` looks up.
app = app_builder


def run_from_args(args) -> int:
    """``pali-engine serve --ray``: run the application on a Ray cluster until Ctrl-C, then delete it."""
    import sys

    import ray

    from .server.images import image_limits

    settings = ServerSettings(
        parallel=args.parallel, max_batch=args.max_batch, max_queue=args.max_queue,
        max_request_bytes=args.max_request_bytes, max_new_tokens_limit=args.max_new_tokens_limit,
        max_beams=args.max_beams,
        images=image_limits(args.max_image_bytes, args.max_image_pixels, args.image_url_hosts,
                            args.image_url_timeout))
    # A replica that Ray gave a GPU runs on it.
    device = "cuda" if args.replica_gpus > 0 else "cpu"
    application = build_app(args.model, model_name=args.model_name, backend=args.backend, device=device,
                            dtype=args.dtype, threads=args.threads, resize=args.resize, vae=args.vae, settings=settings,
                            num_replicas=args.replicas, num_cpus=args.replica_cpus, num_gpus=args.replica_gpus)
    # No address: Ray's own rule (RAY_ADDRESS, else the cluster `ray start` began here, else a new local one).
    ray.init(address=args.ray_address)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        shown_host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"pali-engine serve: {args.replicas} Ray Serve replica(s) on http://{shown_host}:{args.port}/",
              file=sys.stderr, flush=True)
        try:
            serve.run(application, name=APP_NAME, route_prefix="/", blocking=True)
        except KeyboardInterrupt:  # blocking=True runs until Ctrl-C
            pass
        finally:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()
    return 0


__all__ = ["APP_NAME", "REPLICA_HEADER", "PaliEngineDeployment", "app", "app_builder", "build_app", "run_from_args"]
