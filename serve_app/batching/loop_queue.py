"""``LoopQueue``: the decoding loop as a replica's request queue (no Ray).

Requests submitted on the replica's event loop go to the ``DecodingLoop``'s thread; what each
step produces comes back onto the event loop, one callback per step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from serve_app.batching.scheduler import QueuedRequest
from serve_app.config import BatchingConfig
from serve_app.engine.loop import DecodingLoop, StepObserver
from serve_app.engine.types import Engine
from serve_app.model.types import ModelRequest, ModelResult


class LoopQueue:
    """Feeds a ``DecodingLoop`` over ``engine`` from one asyncio event loop."""

    def __init__(self, engine: Engine, observer: StepObserver | None = None) -> None:
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self.loop = DecodingLoop(engine, self._post, observer)

    @property
    def idle(self) -> bool:
        """Whether a request submitted now finds a free row."""
        return self.loop.free_rows > 0

    def submit(self, queued: Sequence[QueuedRequest[ModelRequest, ModelResult]]) -> None:
        """Queue requests for the loop; their events arrive on their streams."""
        if self._event_loop is None:
            self._event_loop = asyncio.get_running_loop()
        self.loop.submit([(item.request, item.stream) for item in queued])

    def configure(self, settings: BatchingConfig) -> None:
        """Apply the live row settings (``max_rows``, ``max_prefills_per_step``)."""
        self.loop.configure(settings.max_rows, settings.max_prefills_per_step)

    def _post(self, callback: Callable[[], None]) -> None:
        assert self._event_loop is not None, "requests come from the event loop first"
        self._event_loop.call_soon_threadsafe(callback)
