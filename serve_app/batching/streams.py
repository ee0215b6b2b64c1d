"""The bridge between a batch generating in a worker thread and the replica's event loop.

The model reports streamed text and asks about cancellations through a
``GenerationObserver`` (see :mod:`serve_app.model.types`); ``StreamsObserver`` implements it
over the ``RequestStream`` of each request in the batch, on a running asyncio loop (no Ray).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Generic, TypeVar

from serve_app.model.types import ModelResult

ResultT = TypeVar("ResultT")

Outcome = ModelResult | Exception
"""How a generation request ends: its result, or the error its caller gets."""


class RequestStream(Generic[ResultT]):
    """The events of one request: its text as it is generated (if any), then its outcome, a
    ``ResultT`` or the exception its caller gets.

    Written on the event loop (``put_text``, ``finish``), read by the request's caller;
    ``cancelled`` is set when the caller goes away and may be read from any thread.
    """

    def __init__(self) -> None:
        self._events: asyncio.Queue[str | ResultT | Exception] = asyncio.Queue()
        self.cancelled = False
        self.admitted = asyncio.Event()
        """Set when the request got a row of the decoding loop (generation only)."""

    def put_text(self, delta: str) -> None:
        """Queue newly generated text."""
        self._events.put_nowait(delta)

    def finish(self, outcome: ResultT | Exception) -> None:
        """Queue the request's outcome; nothing follows it."""
        self._events.put_nowait(outcome)

    def admit(self) -> None:
        """The request got a row: it is being generated."""
        self.admitted.set()

    def cancel(self) -> None:
        """The caller went away: the request is not run, or its row stops early."""
        self.cancelled = True

    async def outcome(self) -> ResultT | Exception:
        """Wait for the request's outcome, skipping any text."""
        while True:
            event = await self._events.get()
            if not isinstance(event, str):
                return event

    async def __aiter__(self) -> AsyncIterator[str | ResultT | Exception]:
        """Text deltas (those that piled up merged into one), then the outcome."""
        while True:
            event = await self._events.get()
            while isinstance(event, str) and not self._events.empty():
                following = self._events.get_nowait()
                if not isinstance(following, str):
                    yield event
                    event = following
                    break
                event += following
            yield event
            if not isinstance(event, str):
                return


class StreamsObserver(Generic[ResultT]):
    """A ``GenerationObserver`` called from the generating thread for a batch of streams."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, streams: Sequence[RequestStream[ResultT]]
    ) -> None:
        self._loop = loop
        self._streams = streams

    def on_text(self, index: int, delta: str) -> None:
        """Thread-safe: queue ``delta`` on request ``index``'s stream."""
        self._loop.call_soon_threadsafe(self._streams[index].put_text, delta)

    def is_cancelled(self, index: int) -> bool:
        """Thread-safe: whether request ``index``'s caller went away."""
        return self._streams[index].cancelled
