"""Per-endpoint HTTP metrics, recorded by an ASGI middleware and by the error handlers."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.metrics import IngressMetrics

UNMATCHED = "unmatched"


def endpoint_of(scope: Scope) -> str:
    """The route template that served the request (bounded label values), or 'unmatched'."""
    route = scope.get("route")
    return str(getattr(route, "path", UNMATCHED))


def metrics_of(scope: Scope) -> IngressMetrics | None:
    """The ingress replica's metrics, once its deployment has started."""
    app: Any = scope.get("app")
    state = getattr(app, "state", None)
    metrics = getattr(state, "metrics", None)
    return metrics if isinstance(metrics, IngressMetrics) else None


def count_error(scope: Scope, code: str) -> None:
    """Count an error response by endpoint and error code."""
    metrics = metrics_of(scope)
    if metrics is not None:
        metrics.errors.inc(tags={"endpoint": endpoint_of(scope), "code": code})


class HttpMetricsMiddleware:
    """Counts responses by endpoint and status, and times them to their first byte."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics = metrics_of(scope)
                if metrics is not None:
                    endpoint = endpoint_of(scope)
                    status = str(message["status"])
                    metrics.requests.inc(tags={"endpoint": endpoint, "status": status})
                    elapsed = time.perf_counter() - started
                    metrics.latency.observe(elapsed, tags={"endpoint": endpoint})
            await send(message)

        await self._app(scope, receive, send_and_record)
