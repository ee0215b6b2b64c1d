"""Per-endpoint HTTP metrics, recorded by an ASGI middleware and by the error handlers."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.metrics import HttpMetrics

UNMATCHED = "unmatched"


def endpoint_of(scope: Scope) -> str:
    """The route template that served the request (bounded label values), or 'unmatched'."""
    route = scope.get("route")
    return str(getattr(route, "path", UNMATCHED))


class HttpMetricsMiddleware:
    """Counts responses by endpoint and status, and times them to their first byte."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                endpoint = endpoint_of(scope)
                status = str(message["status"])
                self._metrics.requests.inc(tags={"endpoint": endpoint, "status": status})
                elapsed = time.perf_counter() - started
                self._metrics.latency.observe(elapsed, tags={"endpoint": endpoint})
            await send(message)

        await self._app(scope, receive, send_and_record)
