"""The FastAPI application: one Engine behind an OpenAI-compatible chat API, the engine's own
``/v1/generate``, model list, health, Prometheus metrics, and the playground page.

    from pali_engine import Engine
    from pali_engine.server import create_app
    app = create_app(Engine.load())          # then: uvicorn.run(app)

Routes: ``GET /`` (playground), ``GET /health``, ``GET /metrics``,
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /v1/options`` (the engine's
generation options and the server's caps), ``POST /v1/chat/completions``,
``POST /v1/generate``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from .. import generation
from .._version import __version__
from .errors import APIError, error_response, install_error_handlers
from .generate_api import GenerateRoute
from .openai_api import ChatRoute
from .service import ServerSettings, Service

STATIC = Path(__file__).resolve().parent / "static"

#: Routes counted by name in pali_requests_total; any other path is counted as "other".
COUNTED_ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/options", "/v1/chat/completions", "/v1/generate"}


class _CountRequests:
    """ASGI middleware counting answered requests by route and status (pure ASGI: it leaves streaming
    responses and their disconnects alone, as Starlette's BaseHTTPMiddleware would not)."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope.get("path", "") if scope.get("path", "") in COUNTED_ROUTES else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.service.metrics.requests.inc(route=route, code=str(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(engine, settings: Optional[ServerSettings] = None, mask_decoder=None) -> FastAPI:
    """The server for ``engine``; ``mask_decoder`` (``segmentation.MaskDecoder``) adds segmentation masks."""
    settings = settings or ServerSettings()
    service = Service(engine, settings, mask_decoder)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.scheduler.close()

    app = FastAPI(title="pali-engine", version=__version__, lifespan=lifespan,
                  description="PaLI-family vision-language models: OpenAI-compatible chat completions and the "
                              "engine's own generate API.")
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(_CountRequests, service=service)

    def model_card() -> dict:
        return {"id": settings.model_id, "object": "model", "created": service.created, "owned_by": "pali-engine",
                "architecture": engine.config.get("architecture", "pali"), "backend": getattr(engine, "backend", None),
                "dtype": getattr(engine, "dtype", None), "image_size": engine.config.get("image_size"),
                "max_prompt_tokens": engine.config.get("max_prompt_tokens"),
                "max_new_tokens": engine.config.get("max_new_tokens"), "masks": mask_decoder is not None}

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id, "active": service.scheduler.active,
                "queued": service.scheduler.queue_depth}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != settings.model_id:
            return error_response(APIError(404, f"no model {model_id!r}; this server serves {settings.model_id!r}",
                                           param="model", code="model_not_found"))
        return model_card()

    @app.get("/v1/options")
    async def options():
        return JSONResponse({
            "options": [dict(spec) for spec in generation.OPTION_SPECS],
            "limits": {"max_new_tokens": settings.max_new_tokens_limit, "num_beams": settings.max_beams,
                       "max_image_bytes": settings.images.max_bytes, "max_image_pixels": settings.images.max_pixels,
                       "max_request_bytes": settings.max_request_bytes},
            "model_max_new_tokens": engine.config.get("max_new_tokens"),
        })

    app.add_api_route("/v1/chat/completions", ChatRoute(service).__call__, methods=["POST"])
    app.add_api_route("/v1/generate", GenerateRoute(service).__call__, methods=["POST"])
    return app
