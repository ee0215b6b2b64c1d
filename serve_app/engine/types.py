"""What the decoding loop and an engine say to each other (no Ray, no torch)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from serve_app.model.types import ModelInfo, ModelRequest, ModelResult


@dataclass(frozen=True)
class Admission:
    """A request the loop gives a row this step, under the loop's key for it."""

    key: int
    request: ModelRequest


@dataclass(frozen=True)
class RowEvent:
    """News of one row after a step: text to stream, and its outcome once it has ended."""

    key: int
    text: str = ""
    outcome: ModelResult | Exception | None = None


@dataclass(frozen=True)
class EngineStats:
    """Counters an engine keeps (for metrics)."""

    images_encoded: int = 0
    """Images run through the vision encoder and the Q-Former."""
    feature_cache_hits: int = 0
    """Requests whose image features were already at hand."""
    feature_cache_bytes: int = 0


class Engine(Protocol):
    """Runs the loop's steps on a model: ``Blip2Engine``, or a fake in tests."""

    @property
    def max_rows(self) -> int:
        """The most rows a step may hold, fixed when the engine starts."""

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        """Drop the ``cancelled`` rows, start the ``admitted`` ones and generate one token for
        every running row. Every admitted key later gets exactly one event with an outcome,
        unless it is cancelled first."""

    def clear(self) -> None:
        """Drop every row (after a step failed as a whole)."""

    def info(self) -> ModelInfo:
        """What the engine runs."""

    def stats(self) -> EngineStats:
        """Its counters so far."""
