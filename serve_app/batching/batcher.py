"""``RequestBatcher``: ``@serve.batch`` in front of a request queue, set by one config.

Requests reach the queue (a ``BatchScheduler``, or the decoding loop) three ways. One that
finds the queue idle (the model idle, or a free row in the loop) starts at once: waiting for
company would only delay it. Single requests that arrive while the model is busy gather in
``@serve.batch`` (``max_batch_size``, ``batch_wait_timeout_s``). A group sent in one call (the
ingress's unit under load) joins the queue as it is. ``configure`` applies a
``BatchingConfig`` to both at once, live.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, cast

from ray import serve

from serve_app.batching.groups import GroupAdmitted
from serve_app.batching.scheduler import QueuedRequest, RequestQueue, RequestT, ResultT
from serve_app.batching.streams import RequestStream
from serve_app.config import BatchingConfig

DEFAULTS = BatchingConfig()

Enqueue = Callable[[Any, QueuedRequest[Any, Any]], Awaitable[None]]
BatchedEnqueue = Callable[[Any, list[QueuedRequest[Any, Any]]], Awaitable[list[None]]]


def _batched(settings: BatchingConfig) -> Callable[[BatchedEnqueue], Enqueue]:
    """``serve.batch`` with ``settings``, typed for this use."""
    decorator = serve.batch(
        max_batch_size=settings.max_batch_size,
        batch_wait_timeout_s=settings.batch_wait_timeout_s,
    )
    return cast(Callable[[BatchedEnqueue], Enqueue], decorator)


class RequestBatcher(Generic[RequestT, ResultT]):
    """Batches concurrent requests into ``queue``; each caller reads its own events.

    Must be used on one event loop (a Serve replica's).
    """

    def __init__(self, queue: RequestQueue[RequestT, ResultT], max_ongoing_requests: int) -> None:
        self._max_ongoing_requests = max_ongoing_requests
        self._queue = queue
        self.settings = DEFAULTS

    def configure(self, settings: BatchingConfig) -> None:
        """Apply new batching settings to the requests that arrive from now on.

        Raises:
            ValueError: ``max_batch_size`` over the replica's ``max_ongoing_requests``, or a
                setting the queue refuses.
        """
        if settings.max_batch_size > self._max_ongoing_requests:
            raise ValueError(
                f"max_batch_size {settings.max_batch_size} exceeds this deployment's "
                f"max_ongoing_requests {self._max_ongoing_requests}: full batches could never "
                "form. Raise model_deployment.max_ongoing_requests in the app args."
            )
        self._queue.configure(settings)
        # The setters are Serve's documented API on @serve.batch methods, absent from its typing.
        self._enqueue.set_max_batch_size(settings.max_batch_size)  # type: ignore[attr-defined]
        self._enqueue.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.settings = settings

    async def events(self, request: RequestT) -> AsyncIterator[str | ResultT | Exception]:
        """The request's text as it is generated (if it streams), then its outcome.

        A caller who goes away cancels its share: dropped unrun, or its row stops early.
        """
        stream: RequestStream[ResultT] = RequestStream()
        queued = QueuedRequest(request, stream)
        try:
            if self._queue.idle:
                self._queue.submit([queued])
            else:
                await self._enqueue(queued)
            async for event in stream:
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            raise

    async def outcomes(self, requests: Sequence[RequestT]) -> list[ResultT | Exception]:
        """The outcomes of a group of requests, queued together at once (no batch wait).

        A caller who goes away cancels the whole group.
        """
        group = self._submit_group(requests)
        try:
            return [await queued.stream.outcome() for queued in group]
        except asyncio.CancelledError:
            for queued in group:
                queued.stream.cancel()
            raise

    async def outcomes_as_done(
        self, requests: Sequence[RequestT]
    ) -> AsyncIterator[tuple[int, ResultT | Exception] | GroupAdmitted]:
        """``GroupAdmitted`` once every request of the group got a row (or is done), and
        ``(index, outcome)`` of each request as soon as it is done (the group is queued at
        once, with no batch wait).

        A caller who goes away cancels what is not done.
        """
        group = self._submit_group(requests)

        async def outcome(index: int) -> tuple[int, ResultT | Exception]:
            return index, await group[index].stream.outcome()

        async def admitted() -> GroupAdmitted:
            for queued in group:
                await queued.stream.admitted.wait()
            return GroupAdmitted()

        outcomes = [asyncio.ensure_future(outcome(index)) for index in range(len(group))]
        admission = asyncio.ensure_future(admitted())
        waiting: set[asyncio.Future[Any]] = {admission, *outcomes}
        told = False  # GroupAdmitted yielded: once, and before any outcome
        try:
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not told:
                    told = True
                    admission.cancel()
                    waiting.discard(admission)
                    yield GroupAdmitted()
                for task in done:
                    if task is not admission:
                        yield task.result()
        finally:
            admission.cancel()
            for queued, task in zip(group, outcomes, strict=True):
                if not task.done():
                    queued.stream.cancel()
                    task.cancel()

    def _submit_group(self, requests: Sequence[RequestT]) -> list[QueuedRequest[RequestT, ResultT]]:
        group: list[QueuedRequest[RequestT, ResultT]] = [
            QueuedRequest(request, RequestStream()) for request in requests
        ]
        self._queue.submit(group)
        return group

    @_batched(DEFAULTS)
    async def _enqueue(self, queued: list[QueuedRequest[RequestT, ResultT]]) -> list[None]:
        self._queue.submit(queued)
        return [None] * len(queued)
