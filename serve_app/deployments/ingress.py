"""``Blip2Ingress``: the CPU ingress deployment, serving HTTP, gRPC and typed handle calls."""

from __future__ import annotations

from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.config import gRPCOptions
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle

from serve_app.config import AuthConfig, LimitsConfig, ModelConfig, RetrievalModelConfig
from serve_app.grpc.service import Blip2GrpcService
from serve_app.http.app import make_http_app
from serve_app.ingress.auth import BearerAuth, require_auth_when_exposed
from serve_app.ingress.model_client import ModelClient
from serve_app.ingress.retrieval import RetrievalHandlers
from serve_app.ingress.retrieval_client import RetrievalClient
from serve_app.metrics import GrpcMetrics, HttpMetrics, IngressMetrics


def serve_proxies() -> tuple[str, int | None]:
    """Where Serve's proxies listen: the HTTP host, and the gRPC port if gRPC is on."""
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running")
    grpc_options: gRPCOptions = ray.get(client._controller.get_grpc_config.remote())
    grpc_on = grpc_options.port > 0 and bool(grpc_options.grpc_servicer_functions)
    return str(client.http_config.host), grpc_options.port if grpc_on else None


@serve.ingress()
class Blip2Ingress(Blip2GrpcService):
    """Validates requests, decodes images and forwards typed requests to the model.

    Its handlers serve every edge: HTTP routes (built per replica by ``make_http_app``), the
    RPCs of ``blip2.v1.Blip2Service`` through Serve's gRPC proxy (generation), and Python
    callers holding the application's handle, for whom every handler is a method:
    ``handle.vqa.remote(VQARequest(...))`` returns a ``VQAResponse``,
    ``handle.embeddings.remote(EmbeddingsRequest(...))`` an ``EmbeddingsResponse``, and errors
    arrive as the typed exceptions of ``serve_app.contract.errors``.
    """

    def __init__(
        self,
        model: DeploymentHandle[Any] | None,
        model_options: ModelConfig | None,
        limits: LimitsConfig,
        auth: AuthConfig,
        model_calls_per_replica: int,
        retrieval: DeploymentHandle[Any] | None = None,
        retrieval_options: RetrievalModelConfig | None = None,
        playground: bool = True,
    ) -> None:
        require_auth_when_exposed(auth, *serve_proxies())
        self._playground = playground
        observer = IngressMetrics()
        retrieval_handlers = None
        if retrieval is not None and retrieval_options is not None:
            retrieval_handlers = RetrievalHandlers(
                RetrievalClient(retrieval), retrieval_options, limits, observer
            )
        super().__init__(
            None if model is None else ModelClient(model, model_calls_per_replica),
            model_options or ModelConfig(),
            limits,
            observer,
            BearerAuth.from_config(auth),
            GrpcMetrics(),
            retrieval_handlers,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's HTTP app (Serve calls it once, after the constructor)."""
        return make_http_app(self, self.auth, HttpMetrics(), self._playground)
