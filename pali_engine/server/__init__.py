"""The HTTP server of ``pali-engine serve``: one Engine behind FastAPI (needs ``pip install fastapi "uvicorn[standard]"``).

    from pali_engine import Engine
    from pali_engine.server import ServerSettings, create_app

    app = create_app(Engine.load(), ServerSettings(parallel=2, max_queue=16))

``app`` is an ASGI application (``uvicorn.run(app, port=8000)``); docs/serving.md
describes its routes, limits, errors and metrics.
"""

__all__ = ["create_app", "ImageLimits", "ServerSettings"]

_EXPORTS = {"create_app": ".app", "ImageLimits": ".images", "ServerSettings": ".service"}


def __getattr__(name: str):
    # Imported when first used: ``pali-engine serve --help`` works without fastapi installed.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
