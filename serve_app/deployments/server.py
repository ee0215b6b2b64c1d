"""``Blip2Server``: the GPU-pinned model deployment; it batches requests for its model."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from serve_app.batching.batcher import RequestBatcher
from serve_app.batching.streams import Outcome
from serve_app.config import BatchingConfig, ModelConfig
from serve_app.contract.errors import GenerationFailedError, ServeAppError
from serve_app.deployments.health import ReplicaHealth
from serve_app.deployments.memory_check import MemoryCheck, assigned_gpus
from serve_app.metrics import ServerMetrics
from serve_app.model.types import (
    GenerationObserver,
    ModelInfo,
    ModelRequest,
    ModelResult,
    ReplicaInfo,
)

logger = logging.getLogger("ray.serve")


class GenerationModel(Protocol):
    """What ``Blip2Server`` needs from a model: ``Blip2Model`` or a test fake."""

    def generate(
        self, requests: Sequence[ModelRequest], observer: GenerationObserver | None = None
    ) -> list[ModelResult | Exception]: ...

    def info(self) -> ModelInfo: ...


ModelFactory = Callable[[ModelConfig], GenerationModel]


def load_blip2(config: ModelConfig) -> GenerationModel:
    """The default model factory: load BLIP-2 as configured."""
    from serve_app.model.blip2 import Blip2Model

    return Blip2Model.load(config)


class Blip2Server:
    """Holds one model and feeds it batches of concurrent requests.

    ``user_config`` (a ``BatchingConfig``) sets how batches form; a ``serve deploy`` that
    changes only it reconfigures running replicas without a restart.
    """

    def __init__(
        self,
        model_options: ModelConfig,
        max_ongoing_requests: int,
        batch_timeout_s: float,
        model_factory: ModelFactory | None = None,
    ) -> None:
        self._memory = MemoryCheck(model_options, assigned_gpus())
        self._model = (model_factory or load_blip2)(model_options)
        self._metrics = ServerMetrics()
        self._batcher: RequestBatcher[ModelRequest, ModelResult] = RequestBatcher(
            self._run_model, max_ongoing_requests, self._metrics.observe_waits
        )
        self._batch_sizes: Counter[int] = Counter()
        self._group_sizes: Counter[int] = Counter()
        self._generate_cpu_s = 0.0
        self._health = ReplicaHealth(batch_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batching settings live (Serve calls this on start and on each update)."""
        batching = BatchingConfig.model_validate(user_config)
        self._memory.check_batch(batching.max_batch_size)
        self._batcher.configure(batching)
        logger.info("Batching set to %s", batching.model_dump())

    async def generate(self, request: ModelRequest) -> ModelResult:
        """Generate for one request; it is batched with the other requests in flight."""
        outcome: str | Outcome | None = None
        async for event in self._batcher.events(request):
            outcome = event
        if isinstance(outcome, Exception):
            raise outcome
        if not isinstance(outcome, ModelResult):
            raise GenerationFailedError("the model returned no result for this request")
        return outcome

    async def generate_group(self, requests: list[ModelRequest]) -> list[ModelResult | Exception]:
        """Generate for a group of requests sent in one call; one outcome per request, in order.

        The group joins the queue at once (it waits for no more company) and may share batches
        with other traffic; a request's failure is its own outcome, not the group's.
        """
        self._group_sizes[len(requests)] += 1
        return await self._batcher.outcomes(requests)

    async def generate_stream(self, request: ModelRequest) -> AsyncIterator[str | ModelResult]:
        """Yield the request's text as it is generated, then its ``ModelResult``.

        Streaming requests share batches with all other traffic.
        """
        async for event in self._batcher.events(request.model_copy(update={"stream": True})):
            if isinstance(event, Exception):
                raise event
            yield event

    def describe(self) -> ReplicaInfo:
        """What this replica serves: its model and the live batching settings."""
        return ReplicaInfo(model=self._model.info(), batching=self._batcher.settings)

    def batch_size_counts(self) -> dict[int, int]:
        """How many batches of each size this replica has run (for tests and diagnostics)."""
        return dict(self._batch_sizes)

    def group_size_counts(self) -> dict[int, int]:
        """How many grouped calls of each size this replica has received (for tests and
        diagnostics)."""
        return dict(self._group_sizes)

    def generate_cpu_seconds(self) -> float:
        """CPU seconds the generating thread has spent inside the model's ``generate`` (the
        rest of the replica's CPU is the cost of serving; for benchmarks and diagnostics)."""
        return self._generate_cpu_s

    def check_health(self) -> None:
        """Serve's health probe: a replica whose requests mostly fail in the model, or whose
        batch hangs, is replaced."""
        if problem := self._health.problem():
            raise RuntimeError(problem)

    def _run_model(
        self, requests: list[ModelRequest], observer: GenerationObserver
    ) -> list[ModelResult | Exception]:
        """Generate in a worker thread; a batch that fails as a whole fails each request."""
        started = time.perf_counter()
        logger.info("Batch of %d: %s", len(requests), " ".join(r.request_id for r in requests))
        self._batch_sizes[len(requests)] += 1
        self._metrics.batch_size.observe(len(requests))
        self._health.batch_started()
        cpu_started = time.thread_time()
        try:
            results = self._model.generate(requests, observer)
        except Exception:
            logger.exception("Batch of %d failed as a whole", len(requests))
            self._metrics.failures.inc(len(requests), tags={"code": GenerationFailedError.code})
            failure = GenerationFailedError("the model failed to generate for this request")
            self._health.batch_finished([failure] * len(requests))
            return [failure] * len(requests)
        finally:
            self._generate_cpu_s += time.thread_time() - cpu_started
            self._metrics.generate_time.observe(time.perf_counter() - started)
        public = [self._public(result, len(requests)) for result in results]
        self._health.batch_finished(public)
        for result in public:
            if isinstance(result, ModelResult):
                if result.completion_tokens:  # Ray counters refuse an increment of 0
                    self._metrics.generated_tokens.inc(result.completion_tokens)
            else:
                self._metrics.failures.inc(tags={"code": getattr(result, "code", "error")})
        return public

    @staticmethod
    def _public(result: ModelResult | Exception, batch_size: int) -> ModelResult | Exception:
        if isinstance(result, ModelResult):
            return result.model_copy(update={"batch_size": batch_size})
        if isinstance(result, ServeAppError):
            return result
        logger.error("Request failed inside its batch: %r", result)
        return GenerationFailedError("the model failed to generate for this request")
