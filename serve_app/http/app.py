"""The HTTP edge: a FastAPI app whose routes hand typed requests to ``Blip2Handlers``.

Built once per ingress replica (``make_http_app``), from that replica's handlers, token check
and metrics; nothing is shared through module globals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from serve_app.contract.api import HealthResponse, ModelList
from serve_app.contract.errors import ServeAppError
from serve_app.contract.openai import ChatCompletion, ChatCompletionRequest
from serve_app.contract.retrieval import EmbeddingsRequest, RankRequest
from serve_app.http import body
from serve_app.http.errors import (
    ERROR_RESPONSES,
    OPENAI_ERROR_RESPONSES,
    install_error_handlers,
    openai_error_response,
)
from serve_app.http.metrics import HttpMetricsMiddleware, endpoint_of
from serve_app.http.openapi import install_openapi, json_body, request_body
from serve_app.http.playground import install_playground
from serve_app.http.retrieval import install_retrieval_routes
from serve_app.http.routes import IMAGE_ROUTES, ImageRoute
from serve_app.http.security import Authorization, Authorize
from serve_app.http.sse import chat_events
from serve_app.ingress.auth import BearerAuth
from serve_app.ingress.handlers import Blip2Handlers
from serve_app.metrics import HttpMetrics


def make_http_app(
    handlers: Blip2Handlers, auth: BearerAuth | None, metrics: HttpMetrics, playground: bool
) -> FastAPI:
    """The ingress's HTTP API: native routes, OpenAI-compatible chat and embeddings, models and
    health (routes of a model the service does not serve are left out), and the playground
    page at ``/`` unless ``playground`` is false."""
    app = FastAPI(
        title="BLIP-2 on Ray Serve",
        version="0.1.0",
        description="Visual question answering, image captioning and image-text retrieval with "
        "Salesforce BLIP-2.",
        # No redirects built from the caller's Host header: a trailing slash is simply a 404.
        redirect_slashes=False,
    )
    install_error_handlers(app, metrics)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    bodies: list[type[BaseModel]] = []
    if handlers.serves_generation:
        bodies += [route.request for route in IMAGE_ROUTES] + [ChatCompletionRequest]
    if handlers.serves_retrieval:
        bodies += [EmbeddingsRequest, RankRequest]
    install_openapi(app, bodies)

    def authorize(authorization: HTTPAuthorizationCredentials | None) -> None:
        if auth is not None:
            auth.authorize(None if authorization is None else authorization.credentials)

    if handlers.serves_generation:
        _install_generation_routes(app, handlers, authorize, metrics)
    if handlers.serves_retrieval:
        install_retrieval_routes(app, handlers, authorize, metrics)

    @app.get("/v1/models", response_model=ModelList, responses={503: ERROR_RESPONSES[503]})
    async def models(authorization: Authorization) -> ModelList:
        """The served models, their dtype, limits and batching settings."""
        authorize(authorization)
        return await handlers.models()

    @app.get("/healthz", response_model=HealthResponse)
    async def health() -> HealthResponse:
        """Liveness of the ingress."""
        return HealthResponse()

    @app.get("/readyz", response_model=HealthResponse, responses={503: ERROR_RESPONSES[503]})
    async def ready() -> HealthResponse:
        """Readiness: a replica of every served model answers."""
        return await handlers.ready()

    if playground:
        install_playground(app, handlers.serves_generation, handlers.serves_retrieval)
    return app


def _install_generation_routes(
    app: FastAPI, handlers: Blip2Handlers, authorize: Authorize, metrics: HttpMetrics
) -> None:
    """The native image routes and OpenAI-compatible chat completions."""
    for route in IMAGE_ROUTES:
        app.post(
            route.path,
            response_model=route.response,
            responses=ERROR_RESPONSES,
            openapi_extra=request_body(route.request),
            summary=route.summary,
        )(_image_endpoint(route, handlers, authorize))

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=OPENAI_ERROR_RESPONSES,
        openapi_extra=json_body(ChatCompletionRequest),
    )
    async def chat_completions(request: Request, authorization: Authorization) -> Response:
        """OpenAI-compatible chat completions about one image; ``stream`` sends SSE chunks."""
        try:
            authorize(authorization)
            handlers.admission.check()
            body.require_media_type(request, ("application/json",))
            raw = await body.read_body(request, handlers.limits)
            chat = body.parse_json(raw, ChatCompletionRequest)
            if chat.stream:
                events = chat_events(await handlers.chat_stream(chat))
                return StreamingResponse(
                    events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
                )
            completion = await handlers.chat_completions(chat)
            return JSONResponse(completion.model_dump(mode="json"))
        except ServeAppError as error:
            metrics.count_error(endpoint_of(request.scope), error.code)
            return openai_error_response(error)


def _image_endpoint(
    route: ImageRoute,
    handlers: Blip2Handlers,
    authorize: Authorize,
) -> Callable[..., Awaitable[BaseModel]]:
    """The route function of one image route: check the token and the load, parse, call."""
    handler: Callable[[Any], Awaitable[BaseModel]] = getattr(handlers, route.handler)
    limits = handlers.limits

    async def endpoint(request: Request, authorization: Authorization) -> BaseModel:
        authorize(authorization)
        handlers.admission.check()  # shed load before the body is read and parsed
        return await handler(await body.parse_image_request(request, route.request, limits))

    endpoint.__name__ = route.handler
    endpoint.__doc__ = route.summary
    return endpoint
