"""JSON error bodies for every failure the HTTP API can report."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.contract.api import ErrorDetail, ErrorResponse
from serve_app.contract.errors import ServeAppError
from serve_app.contract.openai import OpenAIError, OpenAIErrorResponse
from serve_app.http.metrics import endpoint_of
from serve_app.metrics import HttpMetrics

logger = logging.getLogger("ray.serve")

Responses = dict[int | str, dict[str, Any]]
"""Error responses as FastAPI lists them in the OpenAPI document."""


def _documented(body: type[BaseModel], descriptions: dict[int, str]) -> Responses:
    return {status: {"model": body, "description": text} for status, text in descriptions.items()}


ERROR_RESPONSES = _documented(
    ErrorResponse,
    {
        400: "Malformed body, bad image or refused image URL",
        401: "Missing or invalid bearer token",
        408: "The request body did not arrive in time",
        413: "Body, image bytes or image pixels over the limits",
        415: "Unsupported content type",
        422: "A field is missing, unknown or out of range",
        503: "Model overloaded or unavailable (see Retry-After)",
        504: "The request did not finish in time",
    },
)
"""The error responses listed on every inference route of the OpenAPI document."""

OPENAI_ERROR_RESPONSES = _documented(
    OpenAIErrorResponse,
    {
        400: "Invalid request, image or setting",
        401: "Missing or invalid bearer token",
        404: "Unknown model",
        408: "The request body did not arrive in time",
        413: "Body or image over the limits",
        503: "Model overloaded or unavailable (see Retry-After)",
        504: "The request did not finish in time",
    },
)
"""The error responses of the OpenAI-compatible routes (OpenAI's error shape)."""

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def json_error(
    status_code: int, body: dict[str, Any], retry_after_s: float | None = None
) -> JSONResponse:
    """An error body with its status, 401s' Bearer challenge and, if given, the retry time:
    ``Retry-After`` in whole seconds (rounded up) and ``retry-after-ms`` exactly (clients such
    as OpenAI's prefer it, so refused callers do not all come back on the same second)."""
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
        headers["retry-after-ms"] = str(round(retry_after_s * 1000))
    if status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status_code, headers=headers)


def error_response(
    status_code: int,
    code: str,
    message: str,
    param: str | None = None,
    retry_after_s: float | None = None,
) -> JSONResponse:
    """An error in the service's JSON shape."""
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, param=param))
    return json_error(status_code, body.model_dump(), retry_after_s)


def openai_error(error: ServeAppError) -> tuple[int, OpenAIErrorResponse]:
    """The status and OpenAI-shaped body of an error (a 422 becomes OpenAI's 400)."""
    status = 400 if error.status_code == 422 else error.status_code
    kind = {401: "authentication_error", 404: "invalid_request_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    body = OpenAIError(message=error.message, type=kind, param=error.param, code=error.code)
    return status, OpenAIErrorResponse(error=body)


def openai_error_response(error: ServeAppError) -> JSONResponse:
    """An error in OpenAI's JSON shape, with its status."""
    status, body = openai_error(error)
    return json_error(status, body.model_dump(), error.retry_after_s)


def install_error_handlers(app: FastAPI, metrics: HttpMetrics) -> None:
    """Map every exception a route can raise to the JSON error shape, counting each."""

    def count_error(request: Request, code: str) -> None:
        metrics.count_error(endpoint_of(request.scope), code)

    async def on_app_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeAppError)
        count_error(request, exc.code)
        if exc.logged:
            logger.warning("Request failed: %s (%s)", exc.code, exc.message)
        return error_response(exc.status_code, exc.code, exc.message, exc.param, exc.retry_after_s)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        count_error(request, "invalid_request")
        errors = exc.errors()
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        return error_response(422, "invalid_request", "invalid request", param)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        count_error(request, code)
        return error_response(exc.status_code, code, str(exc.detail))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unexpected error", exc_info=exc)
        count_error(request, "internal_error")
        return error_response(500, "internal_error", "internal server error")

    app.add_exception_handler(ServeAppError, on_app_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
