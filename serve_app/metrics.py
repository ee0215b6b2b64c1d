"""Application metrics, exported through Ray Serve's metrics API (Prometheus, like Ray's own).

Every metric also carries Serve's own tags (application, deployment, replica). Names gain
Ray's ``ray_`` prefix when exported, e.g. ``ray_blip2_batch_size_bucket``.
"""

from __future__ import annotations

from typing import cast

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.engine.types import EngineStats


def _tags(*keys: str) -> tuple[str]:
    """Tag keys; Ray's type hint allows one key only, its code any number."""
    return cast("tuple[str]", keys)


SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BYTES = [1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7]


class ServerMetrics:
    """What a model deployment reports about its batches (retrieval) or decoding steps
    (generation: a step's rows are its batch)."""

    def __init__(self) -> None:
        self.batch_size = Histogram(
            "blip2_batch_size",
            description="Requests per model batch (generation: rows per decoding step).",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )
        self.queue_wait = Histogram(
            "blip2_queue_wait_seconds",
            description="Time a request waited on the model replica before its batch started "
            "(generation: before it got a row).",
            boundaries=SECONDS,
        )
        self.generate_time = Histogram(
            "blip2_generate_seconds",
            description="Wall time of one batch (generation: of one decoding step).",
            boundaries=SECONDS,
        )
        self.images_encoded = Counter(
            "blip2_images_encoded",
            description="Images run through the vision encoder and Q-Former (cache misses).",
        )
        self.feature_cache_hits = Counter(
            "blip2_feature_cache_hits",
            description="Requests whose image features were cached (or encoded in the same step "
            "for another request): no vision encoder run.",
        )
        self.feature_cache_bytes = Gauge(
            "blip2_feature_cache_bytes", description="Bytes of image features cached."
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

    def observe_engine(self, before: EngineStats, now: EngineStats) -> EngineStats:
        """Count what an engine's counters gained since ``before``; returns ``now``."""
        gains = (
            (self.images_encoded, now.images_encoded - before.images_encoded),
            (self.feature_cache_hits, now.feature_cache_hits - before.feature_cache_hits),
        )
        for counter, gain in gains:
            if gain > 0:  # Ray counters refuse an increment of 0
                counter.inc(gain)
        if now.feature_cache_bytes != before.feature_cache_bytes:
            self.feature_cache_bytes.set(now.feature_cache_bytes)
        return now


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
