"""Errors of the HTTP server in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Why one shape for every failure: OpenAI clients (the official ones raise
``BadRequestError``, ``RateLimitError``, ... from it) and our own playground
read the same fields, whatever the route, so a bad request never surfaces as a
framework's own error page, a 422 of its validator, or a 500. FastAPI is
imported only by the functions that answer, so that the command line can name
the server's options without it installed.
"""

from __future__ import annotations

from typing import Optional

#: OpenAI's ``type`` for each status the server answers with.
ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A request the server refuses: the HTTP status, a message for the user, and what it is about."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def bad_request(message: str, *, param: Optional[str] = None, code: Optional[str] = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(error: APIError):
    from fastapi.responses import JSONResponse

    headers = {"Retry-After": "1"} if error.status == 429 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def install_error_handlers(app) -> None:
    """Every error the FastAPI ``app`` can raise, answered in OpenAI's shape."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request refused"
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions, " \
                      "POST /v1/generate"
        return JSONResponse(error_body(error.status_code, message, code=None), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(400, f"invalid request: {error.errors()[:1]}"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # A bug of the server, not of the request: said as such, and the server keeps running.
        return JSONResponse(error_body(500, f"internal error: {type(error).__name__}: {error}"), status_code=500)
