"""The retrieval routes: ``POST /v1/embeddings`` (OpenAI's shape and errors) and
``POST /v1/rank`` (the native error shape); JSON bodies, images as base64 or URLs."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_app.contract.errors import ServeAppError
from serve_app.contract.retrieval import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    RankRequest,
    RankResponse,
)
from serve_app.http import body
from serve_app.http.errors import ERROR_RESPONSES, OPENAI_ERROR_RESPONSES, openai_error_response
from serve_app.http.metrics import endpoint_of
from serve_app.http.openapi import json_body
from serve_app.http.security import Authorization, Authorize
from serve_app.ingress.handlers import Blip2Handlers
from serve_app.metrics import HttpMetrics


def install_retrieval_routes(
    app: FastAPI,
    handlers: Blip2Handlers,
    authorize: Authorize,
    metrics: HttpMetrics,
) -> None:
    """Add the embeddings and rank routes (for a service that serves a retrieval model)."""
    retrieval = handlers.retrieval
    limits = handlers.limits

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        responses=OPENAI_ERROR_RESPONSES,
        openapi_extra=json_body(EmbeddingsRequest),
    )
    async def embeddings(request: Request, authorization: Authorization) -> Response:
        """Embed texts (OpenAI's ``input``) and images into BLIP-2's shared space."""
        try:
            authorize(authorization)
            retrieval.calls.admission.check()
            body.require_media_type(request, ("application/json",))
            raw = await body.read_body(request, limits, limits.max_body_bytes)
            response = await retrieval.embeddings(body.parse_json(raw, EmbeddingsRequest))
            return JSONResponse(response.model_dump(mode="json"))
        except ServeAppError as error:
            metrics.count_error(endpoint_of(request.scope), error.code)
            return openai_error_response(error)

    @app.post(
        "/v1/rank",
        response_model=RankResponse,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        openapi_extra=json_body(RankRequest),
    )
    async def rank(request: Request, authorization: Authorization) -> Response:
        """Rank candidate texts for an image, or candidate images for a text, best first."""
        authorize(authorization)
        retrieval.calls.admission.check()
        body.require_media_type(request, ("application/json",))
        raw = await body.read_body(request, limits, limits.max_body_bytes)
        response = await retrieval.rank(body.parse_json(raw, RankRequest))
        return JSONResponse(response.model_dump(mode="json", exclude_none=True))
