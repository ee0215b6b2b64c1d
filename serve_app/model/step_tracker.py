"""Watching a batch as it generates: text deltas, stop strings and cancelled rows (no Ray).

``StepTracker`` is a transformers ``StoppingCriteria``: after every generation step it sees
each row's tokens so far, reports new text of streaming rows to a ``GenerationObserver``, and
finishes rows that reached a stop string or whose caller went away, so they cost no more work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria

from serve_app.model.types import GenerationObserver

Render = Callable[[int, list[int]], tuple[str, bool]]
"""Turns a row's generated token ids into (final-form text, whether a stop string was hit)."""


@dataclass
class TrackedRow:
    """What the tracker knows about one row of the batch."""

    index: int
    stream: bool
    stop: tuple[str, ...]
    emitted: str = ""
    finished: bool = False
    stop_hit: bool = False


def settled_prefix(text: str, stop: Sequence[str]) -> str:
    """The part of ``text`` that more tokens cannot change.

    Trailing white space (the final text is stripped), a trailing partial character and any
    tail that could be the start of a stop string are held back.
    """
    settled = text.rstrip().rstrip("\ufffd")
    held = 0
    for s in stop:
        for length in range(min(len(s) - 1, len(settled)), 0, -1):
            if settled.endswith(s[:length]):
                held = max(held, length)
                break
    return settled[: len(settled) - held].rstrip()


class StepTracker(StoppingCriteria):  # type: ignore[misc]
    """Streams deltas and finishes stopped or cancelled rows after every generation step."""

    def __init__(
        self,
        rows: list[TrackedRow],
        offset: int,
        render: Render,
        observer: GenerationObserver | None,
    ) -> None:
        self.rows = rows
        self._offset = offset
        self._render = render
        self._observer = observer

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        # Token ids leave the device, and text is rendered, only for rows that stream or stop
        # on a string; other rows are only checked for a caller who went away.
        watched = any(row.stream or row.stop for row in self.rows)
        generated = input_ids[:, self._offset :].tolist() if watched else None
        finished = [
            self._step(row, generated[position] if generated is not None else [])
            for position, row in enumerate(self.rows)
        ]
        return torch.tensor(finished, dtype=torch.bool, device=input_ids.device)

    def _step(self, row: TrackedRow, tokens: list[int]) -> bool:
        if row.finished:
            return True
        if self._observer is not None and self._observer.is_cancelled(row.index):
            row.finished = True
            return True
        if row.stream or row.stop:
            text, row.stop_hit = self._render(row.index, tokens)
            row.finished = row.stop_hit
            if row.stream:
                self.emit(row, text if row.stop_hit else settled_prefix(text, row.stop))
        return row.finished

    def emit(self, row: TrackedRow, text: str) -> None:
        """Report the part of ``text`` not reported yet, if the row streams and it extends what
        was reported."""
        if self._observer is None or not row.stream or not text.startswith(row.emitted):
            return
        if delta := text[len(row.emitted) :]:
            row.emitted = text
            self._observer.on_text(row.index, delta)
