"""``Blip2RetrievalServer``: the GPU-pinned retrieval deployment; it batches embeddings and
matching for its model.

Image work (embedding images, matching) and text work (embedding texts) batch apart: a text
needs no vision pass, so a burst of text queries never waits behind images. Both batchers take
their settings from the deployment's ``user_config``, as the generation deployment's does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from serve_app.batching.batcher import RequestBatcher
from serve_app.batching.scheduler import BatchScheduler
from serve_app.config import BatchingConfig, RetrievalModelConfig
from serve_app.contract.errors import GenerationFailedError, ServeAppError
from serve_app.deployments.health import ReplicaHealth
from serve_app.deployments.memory_check import MemoryCheck, assigned_gpus
from serve_app.metrics import ServerMetrics
from serve_app.model.retrieval_types import (
    ImageEmbedding,
    ImageEmbeddingRequest,
    MatchRequest,
    MatchResult,
    RetrievalInfo,
    RetrievalReplicaInfo,
    RetrievalRequest,
    RetrievalResult,
    TextEmbedding,
    TextEmbeddingRequest,
)
from serve_app.model.types import GenerationObserver

logger = logging.getLogger("ray.serve")

ResultT = TypeVar("ResultT", bound=BaseModel)


class RetrievalModel(Protocol):
    """What ``Blip2RetrievalServer`` needs from a model: ``Blip2Retrieval`` or a test fake."""

    def run(self, requests: Sequence[RetrievalRequest]) -> list[RetrievalResult | Exception]: ...

    def info(self) -> RetrievalInfo: ...


RetrievalModelFactory = Callable[[RetrievalModelConfig], RetrievalModel]


def load_retrieval(config: RetrievalModelConfig) -> RetrievalModel:
    """The default model factory: load the retrieval model as configured."""
    from serve_app.model.retrieval import Blip2Retrieval

    return Blip2Retrieval.load(config)


class Blip2RetrievalServer:
    """Holds one retrieval model and feeds it batches of concurrent requests."""

    def __init__(
        self,
        model_options: RetrievalModelConfig,
        max_ongoing_requests: int,
        batch_timeout_s: float,
        model_factory: RetrievalModelFactory | None = None,
    ) -> None:
        self._memory = MemoryCheck(model_options, assigned_gpus())
        self._model = (model_factory or load_retrieval)(model_options)
        self._metrics = ServerMetrics()
        self._images: RequestBatcher[RetrievalRequest, RetrievalResult] = RequestBatcher(
            BatchScheduler(self._run_model, on_batch_start=self._metrics.observe_waits),
            max_ongoing_requests,
        )
        self._texts: RequestBatcher[RetrievalRequest, RetrievalResult] = RequestBatcher(
            BatchScheduler(self._run_model, on_batch_start=self._metrics.observe_waits),
            max_ongoing_requests,
        )
        self._batch_sizes: Counter[int] = Counter()
        self._health = ReplicaHealth(batch_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batching settings live (Serve calls this on start and on each update)."""
        batching = BatchingConfig.model_validate(user_config)
        self._memory.check_batch(batching.max_batch_size)
        self._images.configure(batching)
        self._texts.configure(batching)
        logger.info("Batching set to %s", batching.model_dump())

    async def embed_image(self, request: ImageEmbeddingRequest) -> ImageEmbedding:
        """One image's query embeddings; batched with the other image work in flight."""
        return _expect(await self._one(request), ImageEmbedding)

    async def embed_text(self, request: TextEmbeddingRequest) -> TextEmbedding:
        """One text's embedding; batched with the other texts in flight."""
        return _expect(await self._one(request), TextEmbedding)

    async def match(self, request: MatchRequest) -> MatchResult:
        """Score an image against texts (or a text against images); batched with image work."""
        return _expect(await self._one(request), MatchResult)

    async def run_group(
        self, requests: list[RetrievalRequest]
    ) -> list[RetrievalResult | Exception]:
        """A group of requests sent in one call; one outcome per request, in order.

        Texts and images join their own queues at once; a request's failure is its own.
        """
        texts = [i for i, r in enumerate(requests) if isinstance(r, TextEmbeddingRequest)]
        others = [i for i, r in enumerate(requests) if not isinstance(r, TextEmbeddingRequest)]
        text_outcomes, other_outcomes = await asyncio.gather(
            self._texts.outcomes([requests[i] for i in texts]),
            self._images.outcomes([requests[i] for i in others]),
        )
        outcomes: dict[int, RetrievalResult | Exception] = {
            **dict(zip(texts, text_outcomes, strict=True)),
            **dict(zip(others, other_outcomes, strict=True)),
        }
        return [outcomes[i] for i in range(len(requests))]

    def describe(self) -> RetrievalReplicaInfo:
        """What this replica serves: its model and the live batching settings."""
        return RetrievalReplicaInfo(model=self._model.info(), batching=self._images.settings)

    def batch_size_counts(self) -> dict[int, int]:
        """How many batches of each size this replica has run (for tests and diagnostics)."""
        return dict(self._batch_sizes)

    def check_health(self) -> None:
        """Serve's health probe: a replica whose requests mostly fail in the model, or whose
        batch hangs, is replaced."""
        if problem := self._health.problem():
            raise RuntimeError(problem)

    async def _one(self, request: RetrievalRequest) -> RetrievalResult:
        batcher = self._texts if isinstance(request, TextEmbeddingRequest) else self._images
        outcome: str | RetrievalResult | Exception | None = None
        async for event in batcher.events(request):
            outcome = event
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is None or isinstance(outcome, str):
            raise GenerationFailedError("the retrieval model returned no result")
        return outcome

    def _run_model(
        self, requests: list[RetrievalRequest], observer: GenerationObserver
    ) -> list[RetrievalResult | Exception]:
        """Run a batch in a worker thread; a batch that fails as a whole fails each request."""
        started = time.perf_counter()
        logger.info("Batch of %d: %s", len(requests), " ".join(r.request_id for r in requests))
        self._batch_sizes[len(requests)] += 1
        self._metrics.batch_size.observe(len(requests))
        self._health.batch_started()
        try:
            outcomes = self._model.run(requests)
        except Exception:
            logger.exception("Batch of %d failed as a whole", len(requests))
            outcomes = [RuntimeError("batch failed")] * len(requests)
        finally:
            self._metrics.generate_time.observe(time.perf_counter() - started)
        public = [self._public(outcome) for outcome in outcomes]
        self._health.batch_finished(public)
        for outcome in public:
            if isinstance(outcome, ServeAppError):
                self._metrics.failures.inc(tags={"code": outcome.code})
        return public

    @staticmethod
    def _public(outcome: RetrievalResult | Exception) -> RetrievalResult | Exception:
        if isinstance(outcome, ServeAppError) or not isinstance(outcome, Exception):
            return outcome
        logger.error("Request failed inside its batch: %r", outcome)
        return GenerationFailedError("the retrieval model failed on this request")


def _expect(result: RetrievalResult, kind: type[ResultT]) -> ResultT:
    if not isinstance(result, kind):
        raise GenerationFailedError("the retrieval model returned the wrong result")
    return result
