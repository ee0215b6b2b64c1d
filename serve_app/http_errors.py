"""JSON error bodies for every failure the HTTP API can report."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.errors import ServeAppError
from serve_app.http_metrics import count_error
from serve_app.openai_schemas import OpenAIErrorResponse
from serve_app.schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = 1
"""Seconds a client is asked to wait after a 503."""

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed body, bad image or refused image URL",
        401: "Missing or invalid bearer token",
        413: "Body, image bytes or image pixels over the limits",
        415: "Unsupported content type",
        422: "A field is missing, unknown or out of range",
        503: "Model overloaded or unavailable (see Retry-After)",
        504: "The request did not finish in time",
    }.items()
}
"""The error responses listed on every inference route of the OpenAPI document."""

OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": OpenAIErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request, image or setting",
        401: "Missing or invalid bearer token",
        404: "Unknown model",
        413: "Body or image over the limits",
        503: "Model overloaded or unavailable (see Retry-After)",
        504: "The request did not finish in time",
    }.items()
}
"""The error responses of the OpenAI-compatible routes (OpenAI's error shape)."""

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def json_error(status_code: int, body: dict[str, Any]) -> JSONResponse:
    """An error body with its status; 503s carry ``Retry-After``, 401s the Bearer challenge."""
    headers = {}
    if status_code == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status_code, headers=headers)


def error_response(
    status_code: int, code: str, message: str, param: str | None = None
) -> JSONResponse:
    """An error in the service's JSON shape."""
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, param=param))
    return json_error(status_code, body.model_dump())


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to the JSON error shape."""

    async def on_app_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeAppError)
        count_error(request.scope, exc.code)
        if exc.status_code >= 500:
            logger.warning("Request failed: %s (%s)", exc.code, exc.message)
        return error_response(exc.status_code, exc.code, exc.message, exc.param)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        count_error(request.scope, "invalid_request")
        errors = exc.errors()
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        return error_response(422, "invalid_request", "invalid request", param)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        count_error(request.scope, code)
        return error_response(exc.status_code, code, str(exc.detail))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unexpected error", exc_info=exc)
        count_error(request.scope, "internal_error")
        return error_response(500, "internal_error", "internal server error")

    app.add_exception_handler(ServeAppError, on_app_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
