"""``BatchScheduler``: runs the model one batch at a time, each as full as the queue allows.

``@serve.batch`` closes a batch ``batch_wait_timeout_s`` after its first request, also while
the model is still busy with the previous one, so under load it would run a train of small
batches. The scheduler sits behind it: batches that form while the model is busy wait in one
queue, and when the model is free it takes everything waiting, up to ``max_batch_size``, as one
batch. No Ray here.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from serve_app.batching.streams import RequestStream, StreamsObserver
from serve_app.config import DEFAULT_MAX_BATCH_SIZE, BatchingConfig
from serve_app.contract.errors import GenerationFailedError
from serve_app.model.types import GenerationObserver

logger = logging.getLogger("ray.serve")

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")

RunBatch = Callable[[list[RequestT], GenerationObserver], Sequence[ResultT | Exception]]
"""Runs the model on a batch (in a worker thread); returns one outcome per request."""

OnBatchStart = Callable[[list[float]], None]
"""Told, as a batch starts, how many seconds each of its requests waited."""


@dataclass(frozen=True)
class QueuedRequest(Generic[RequestT, ResultT]):
    """A request waiting for the model, with the stream its caller reads."""

    request: RequestT
    stream: RequestStream[ResultT]
    arrived: float = field(default_factory=time.perf_counter)


class RequestQueue(Protocol[RequestT, ResultT]):
    """Where a replica's requests go to be run: a ``BatchScheduler`` or the decoding loop."""

    @property
    def idle(self) -> bool:
        """Whether a request submitted now starts at once."""

    def submit(self, queued: Sequence[QueuedRequest[RequestT, ResultT]]) -> None:
        """Queue a group of requests; their outcomes arrive on their streams."""

    def configure(self, settings: BatchingConfig) -> None:
        """Apply live batching settings."""


class BatchScheduler(Generic[RequestT, ResultT]):
    """Feeds queued requests to ``run_batch`` in batches of at most ``max_batch_size``.

    Batches run one at a time in a worker thread, oldest requests first; a request whose
    caller went away before its batch started is dropped unrun. With ``merge`` off, each
    submitted group runs as its own batch (``@serve.batch`` alone). Must be used on one event
    loop.
    """

    def __init__(
        self,
        run_batch: RunBatch[RequestT, ResultT],
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        merge: bool = True,
        on_batch_start: OnBatchStart | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.merge = merge
        self._run_batch = run_batch
        self._on_batch_start = on_batch_start
        self._groups: deque[deque[QueuedRequest[RequestT, ResultT]]] = deque()
        self._work = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._running = False

    @property
    def idle(self) -> bool:
        """Whether no batch is running and none is waiting: a request submitted now starts at
        once."""
        return not self._running and not self._groups

    def configure(self, settings: BatchingConfig) -> None:
        """Batch up to ``max_batch_size``, merging waiting batches if ``merge_waiting_batches``."""
        self.max_batch_size = settings.max_batch_size
        self.merge = settings.merge_waiting_batches

    def submit(self, queued: Sequence[QueuedRequest[RequestT, ResultT]]) -> None:
        """Queue a group of requests; their outcomes arrive on their streams."""
        self._groups.append(deque(queued))
        self._work.set()
        if self._runner is None or self._runner.done():
            # A context of its own: the runner serves every request, not the one that started it
            # (its log lines would otherwise carry that request's id).
            loop = asyncio.get_running_loop()
            self._runner = loop.create_task(self._run_forever(), context=contextvars.Context())

    async def _run_forever(self) -> None:
        while True:
            await self._work.wait()
            batch = self._next_batch()
            if not self._groups:
                self._work.clear()
            if batch:
                self._running = True
                try:
                    await self._run(batch)
                finally:
                    self._running = False

    def _next_batch(self) -> list[QueuedRequest[RequestT, ResultT]]:
        batch: list[QueuedRequest[RequestT, ResultT]] = []
        while self._groups and len(batch) < self.max_batch_size:
            group = self._groups[0]
            while group and len(batch) < self.max_batch_size:
                queued = group.popleft()
                if not queued.stream.cancelled:
                    batch.append(queued)
            if not group:
                self._groups.popleft()
            if not self.merge and batch:
                break
        return batch

    async def _run(self, batch: list[QueuedRequest[RequestT, ResultT]]) -> None:
        streams = [queued.stream for queued in batch]
        observer = StreamsObserver(asyncio.get_running_loop(), streams)
        requests = [queued.request for queued in batch]
        if self._on_batch_start is not None:
            started = time.perf_counter()
            self._on_batch_start([started - queued.arrived for queued in batch])
        try:
            outcomes: list[ResultT | Exception] = list(
                await asyncio.to_thread(self._run_batch, requests, observer)
            )
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
        except Exception:
            logger.exception("A batch of %d could not be run", len(batch))
            failure = GenerationFailedError("the model failed to generate for this request")
            outcomes = [failure] * len(batch)
        for stream, outcome in zip(streams, outcomes, strict=True):
            stream.finish(outcome)
