"""Application metrics, exported through Ray Serve's metrics API (Prometheus, like Ray's own).

Every metric also carries Serve's own tags (application, deployment, replica). Names gain
Ray's ``ray_`` prefix when exported, e.g. ``ray_blip2_batch_size_bucket``.
"""

from __future__ import annotations

from typing import cast

from ray.serve.metrics import Counter, Histogram


def _tags(*keys: str) -> tuple[str]:
    """Tag keys; Ray's type hint allows one key only, its code any number."""
    return cast("tuple[str]", keys)


SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BYTES = [1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7]


class ServerMetrics:
    """What the model deployment reports about its batches."""

    def __init__(self) -> None:
        self.batch_size = Histogram(
            "blip2_batch_size",
            description="Requests per model batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )
        self.queue_wait = Histogram(
            "blip2_queue_wait_seconds",
            description="Time a request waited on the model replica before its batch started.",
            boundaries=SECONDS,
        )
        self.generate_time = Histogram(
            "blip2_generate_seconds",
            description="Wall time of one batched generation.",
            boundaries=SECONDS,
        )
        self.generated_tokens = Counter(
            "blip2_generated_tokens", description="Tokens generated for callers."
        )
        self.failures = Counter(
            "blip2_model_failures",
            description="Requests the model failed, by error code.",
            tag_keys=("code",),
        )

    def observe_waits(self, waits: list[float]) -> None:
        """Record how long each request of a starting batch waited for it."""
        for wait in waits:
            self.queue_wait.observe(wait)


class IngressMetrics:
    """What the ingress reports about the images it decodes (an ``ImageObserver``)."""

    def __init__(self) -> None:
        self.image_bytes = Histogram(
            "blip2_image_bytes", description="Size of images received.", boundaries=BYTES
        )
        self.decode_time = Histogram(
            "blip2_image_decode_seconds",
            description="Time to fetch (for URLs), decode and resize one image.",
            boundaries=SECONDS,
        )

    def on_image(self, seconds: float, size: int | None) -> None:
        """Record one decoded image."""
        self.decode_time.observe(seconds)
        if size is not None:
            self.image_bytes.observe(size)


class HttpMetrics:
    """What the ingress reports about HTTP traffic."""

    def __init__(self) -> None:
        self.requests = Counter(
            "blip2_http_requests",
            description="HTTP requests by endpoint and status.",
            tag_keys=_tags("endpoint", "status"),
        )
        self.errors = Counter(
            "blip2_http_errors",
            description="HTTP errors by endpoint and error code.",
            tag_keys=_tags("endpoint", "code"),
        )
        self.latency = Histogram(
            "blip2_http_request_seconds",
            description="Time to the response's first byte, by endpoint.",
            boundaries=SECONDS,
            tag_keys=("endpoint",),
        )

    def count_error(self, endpoint: str, code: str) -> None:
        """Count an error response by endpoint and error code."""
        self.errors.inc(tags={"endpoint": endpoint, "code": code})


class GrpcMetrics:
    """What the ingress reports about gRPC calls (Serve's proxy counts them by status)."""

    def __init__(self) -> None:
        self.errors = Counter(
            "blip2_grpc_errors",
            description="Failed gRPC calls by method and error code.",
            tag_keys=_tags("method", "code"),
        )

    def count_error(self, method: str, code: str) -> None:
        """Count a failed call by method and error code."""
        self.errors.inc(tags={"method": method, "code": code})
