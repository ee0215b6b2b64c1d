"""The bridge between a batch generating in a worker thread and the replica's event loop.

The model reports streamed text and asks about cancellations through a
``GenerationObserver``; ``BatchEvents`` implements it for a running asyncio loop (no Ray).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol


class GenerationObserver(Protocol):
    """Receives streamed text and says which requests are no longer wanted."""

    def on_text(self, index: int, delta: str) -> None:
        """New text for request ``index`` (its deltas add up to its final text)."""

    def is_cancelled(self, index: int) -> bool:
        """Whether request ``index``'s caller has gone away."""


class BatchEvents:
    """A ``GenerationObserver`` called from the generating thread, read on the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, size: int, is_cancelled: Callable[[int], bool]
    ) -> None:
        self._loop = loop
        self._size = size
        self._is_cancelled = is_cancelled
        self._queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()

    def on_text(self, index: int, delta: str) -> None:
        """Thread-safe: queue ``delta`` for request ``index``."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (index, delta))

    def is_cancelled(self, index: int) -> bool:
        """Thread-safe: whether request ``index`` was cancelled."""
        return self._is_cancelled(index)

    def close(self) -> None:
        """Thread-safe: no more text will come."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def steps(self) -> AsyncIterator[list[str | None]]:
        """Per-request text that arrived since the last step (None where none did), until
        ``close``; text that piled up while the loop was busy is merged into one step."""
        finished = False
        while not finished:
            step: list[str | None] = [None] * self._size
            event = await self._queue.get()
            while True:
                if event is None:
                    finished = True
                    break
                index, delta = event
                step[index] = (step[index] or "") + delta
                if self._queue.empty():
                    break
                event = self._queue.get_nowait()
            if any(delta is not None for delta in step):
                yield step
