"""``Blip2Server``: the GPU-pinned model deployment that batches requests with ``@serve.batch``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, cast

from ray import serve

from serve_app.batch_events import GenerationObserver, RequestStream
from serve_app.batch_scheduler import BatchScheduler, QueuedRequest
from serve_app.config import BatchingConfig, ModelConfig
from serve_app.errors import GenerationFailedError, ServeAppError
from serve_app.metrics import ServerMetrics
from serve_app.schemas import GenerationRequest, GenerationResult

logger = logging.getLogger("ray.serve")


class GenerationModel(Protocol):
    """What ``Blip2Server`` needs from a model: ``Blip2Model`` or a test fake."""

    def generate(
        self, requests: Sequence[GenerationRequest], observer: GenerationObserver | None = None
    ) -> list[GenerationResult | Exception]: ...

    def describe(self) -> dict[str, Any]: ...


UNHEALTHY_AFTER_FAILED_BATCHES = 3
"""Whole-batch failures in a row after which the replica reports itself unhealthy."""

ModelFactory = Callable[[ModelConfig], GenerationModel]

BatchEvent = str | GenerationResult | Exception
"""What a request yields: streamed text, then its outcome."""


def load_blip2(config: ModelConfig) -> GenerationModel:
    """The default model factory: load BLIP-2 as configured."""
    from serve_app.model import Blip2Model

    return Blip2Model.load(config)


Enqueue = Callable[[Any, QueuedRequest], Awaitable[None]]
BatchedEnqueue = Callable[[Any, list[QueuedRequest]], Awaitable[list[None]]]


def _batched(
    max_batch_size: int, batch_wait_timeout_s: float
) -> Callable[[BatchedEnqueue], Enqueue]:
    """``serve.batch``, typed for this use."""
    decorator = serve.batch(
        max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s
    )
    return cast(Callable[[BatchedEnqueue], Enqueue], decorator)


class Blip2Server:
    """Holds one model and feeds it batches of concurrent requests.

    ``@serve.batch`` gathers requests (``max_batch_size``, ``batch_wait_timeout_s``) and hands
    each batch to a ``BatchScheduler``, which runs the model one batch at a time in a worker
    thread, merging batches that formed while the model was busy. ``user_config`` (a
    ``BatchingConfig``) sets both; a ``serve deploy`` that changes only it reconfigures running
    replicas without a restart.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        max_ongoing_requests: int,
        model_factory: ModelFactory | None = None,
    ) -> None:
        self._model_config = model_config
        self._max_ongoing_requests = max_ongoing_requests
        self._model = (model_factory or load_blip2)(model_config)
        self._batching = BatchingConfig()
        self._scheduler = BatchScheduler(self._run_model, self._batching.max_batch_size)
        self._batch_sizes: Counter[int] = Counter()
        self._failed_batches_in_a_row = 0
        self._metrics = ServerMetrics()
        self._arrivals: dict[int, float] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batching settings live (Serve calls this on start and on each update)."""
        batching = BatchingConfig.model_validate(user_config)
        if batching.max_batch_size > self._max_ongoing_requests:
            raise ValueError(
                f"max_batch_size {batching.max_batch_size} exceeds this deployment's "
                f"max_ongoing_requests {self._max_ongoing_requests}: full batches could never "
                "form. Raise model_deployment.max_ongoing_requests in the app args."
            )
        # The setters are Serve's documented API on @serve.batch methods, absent from its typing.
        self._enqueue.set_max_batch_size(batching.max_batch_size)  # type: ignore[attr-defined]
        self._enqueue.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._scheduler.max_batch_size = batching.max_batch_size
        self._scheduler.merge = batching.merge_waiting_batches
        self._batching = batching
        logger.info("Batching set to %s", batching.model_dump())

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate for one request; it is batched with the other requests in flight."""
        outcome: BatchEvent | None = None
        async for event in self._events(request):
            outcome = event
        if isinstance(outcome, Exception):
            raise outcome
        if not isinstance(outcome, GenerationResult):
            raise GenerationFailedError("the model returned no result for this request")
        return outcome

    async def generate_stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[str | GenerationResult]:
        """Yield the request's text as it is generated, then its ``GenerationResult``.

        Streaming requests share batches with all other traffic.
        """
        async for event in self._events(request.model_copy(update={"stream": True})):
            if isinstance(event, Exception):
                raise event
            yield event

    async def _events(self, request: GenerationRequest) -> AsyncIterator[BatchEvent]:
        """The request's events from its batch; a caller who goes away cancels its share."""
        stream = RequestStream()
        self._arrivals[id(request)] = time.perf_counter()
        try:
            await self._enqueue(QueuedRequest(request, stream))
            async for event in stream:
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            raise
        finally:
            self._arrivals.pop(id(request), None)

    @_batched(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _enqueue(self, queued: list[QueuedRequest]) -> list[None]:
        self._scheduler.submit(queued)
        return [None] * len(queued)

    def _run_model(
        self, requests: list[GenerationRequest], observer: GenerationObserver
    ) -> list[GenerationResult | Exception]:
        """Generate in a worker thread; a batch that fails as a whole fails each request."""
        started = time.perf_counter()
        self._batch_sizes[len(requests)] += 1
        self._metrics.batch_size.observe(len(requests))
        for request in requests:
            self._metrics.queue_wait.observe(started - self._arrivals.get(id(request), started))
        try:
            results = self._model.generate(requests, observer)
        except Exception:
            logger.exception("Batch of %d failed as a whole", len(requests))
            self._failed_batches_in_a_row += 1
            self._metrics.failures.inc(len(requests), tags={"code": GenerationFailedError.code})
            failure = GenerationFailedError("the model failed to generate for this request")
            return [failure] * len(requests)
        finally:
            self._metrics.generate_time.observe(time.perf_counter() - started)
        self._failed_batches_in_a_row = 0
        public = [self._public(result) for result in results]
        for result in public:
            if isinstance(result, GenerationResult):
                if result.completion_tokens:  # Ray counters refuse an increment of 0
                    self._metrics.generated_tokens.inc(result.completion_tokens)
            else:
                self._metrics.failures.inc(tags={"code": getattr(result, "code", "error")})
        return public

    @staticmethod
    def _public(result: GenerationResult | Exception) -> GenerationResult | Exception:
        if isinstance(result, GenerationResult | ServeAppError):
            return result
        logger.error("Request failed inside its batch: %r", result)
        return GenerationFailedError("the model failed to generate for this request")

    def describe(self) -> dict[str, Any]:
        """What this replica serves: the model's description plus the live batching settings."""
        return {**self._model.describe(), **self._batching.model_dump()}

    def batch_size_counts(self) -> dict[int, int]:
        """How many batches of each size this replica has run (for tests and diagnostics)."""
        return dict(self._batch_sizes)

    def check_health(self) -> None:
        """Serve's health probe: a replica whose whole batches keep failing is replaced."""
        if self._failed_batches_in_a_row >= UNHEALTHY_AFTER_FAILED_BATCHES:
            raise RuntimeError(
                f"{self._failed_batches_in_a_row} batches in a row failed as a whole"
            )
