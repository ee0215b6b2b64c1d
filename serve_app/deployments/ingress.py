"""``Blip2Ingress``: the CPU ingress deployment, serving HTTP and typed handle calls alike."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle

from serve_app.config import AuthConfig, LimitsConfig, ModelConfig
from serve_app.http.app import make_http_app
from serve_app.ingress.auth import BearerAuth, require_auth_when_exposed
from serve_app.ingress.handlers import Blip2Handlers
from serve_app.ingress.model_client import ModelClient
from serve_app.metrics import HttpMetrics, IngressMetrics


def serve_http_host() -> str:
    """The address Serve's HTTP proxies listen on (its ``http_options.host``)."""
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running")
    return str(client.http_config.host)


@serve.ingress()
class Blip2Ingress(Blip2Handlers):
    """Validates requests, decodes images and forwards typed requests to the model.

    Its handlers serve both edges: HTTP routes (built per replica by ``make_http_app``) and
    Python callers holding the application's handle, for whom every handler is a method:
    ``handle.vqa.remote(VQARequest(...))`` returns a ``VQAResponse``, and errors arrive as the
    typed exceptions of ``serve_app.contract.errors``.
    """

    def __init__(
        self,
        model: DeploymentHandle[Any],
        model_options: ModelConfig,
        limits: LimitsConfig,
        auth: AuthConfig,
        model_calls_per_replica: int,
    ) -> None:
        require_auth_when_exposed(serve_http_host(), auth)
        client = ModelClient(model, model_calls_per_replica)
        super().__init__(client, model_options, limits, IngressMetrics())
        self._auth = BearerAuth.from_config(auth)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's HTTP app (Serve calls it once, after the constructor)."""
        return make_http_app(self, self._auth, HttpMetrics())
