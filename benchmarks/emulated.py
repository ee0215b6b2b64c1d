"""``EmulatedAcceleratorModel``: a stand-in engine whose requests cost a known time.

A request runs ``steps`` decoding steps; a step with ``n`` rows takes
``(fixed_ms + per_item_ms * n) / steps``, so a batch of ``n`` that runs together takes
``fixed_ms + per_item_ms * n`` and the service around it is measured against an exact limit:
one replica serves at most ``max_rows / batch_seconds`` per second. By default the loop's
thread waits in ``time.sleep``, as a thread waiting on a GPU does. With ``gil_share`` it is
GIL-honest: in each step the thread first runs Python for ``gil_share`` of the step (thread CPU
time, as a step that launches its kernels does), then waits for the rest. Python work elsewhere
in the replica (the event loop, Ray, per-request code) then delays the steps, as it delays a
real GPU's.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from serve_app.config import ModelConfig
from serve_app.engine.types import Admission, EngineStats, RowEvent
from serve_app.model.types import ModelInfo, ModelResult


@dataclass(frozen=True)
class BatchCost:
    """The time one batch takes: ``fixed_ms + per_item_ms * batch_size``."""

    fixed_ms: float = 40.0
    per_item_ms: float = 2.0
    gil_share: float = 0.0
    """Share of each decoding step the generating thread spends running Python."""
    steps: int = 20
    """Decoding steps per batch (used with ``gil_share``)."""

    def seconds(self, batch_size: int) -> float:
        """Seconds a batch of ``batch_size`` takes."""
        return (self.fixed_ms + self.per_item_ms * batch_size) / 1000

    def run_step(self, rows: int) -> None:
        """Take one step's time: asleep, or holding the GIL for ``gil_share`` of it first."""
        step = self.seconds(rows) / self.steps
        python_until = time.thread_time() + step * self.gil_share
        while time.thread_time() < python_until:
            pass
        time.sleep(step * (1 - self.gil_share))

    def limit_rps(self, max_batch_size: int, replicas: int = 1) -> float:
        """The most requests per second ``replicas`` can serve: full batches back to back."""
        return replicas * max_batch_size / self.seconds(max_batch_size)


class EmulatedAcceleratorModel:
    """An engine whose steps sleep for a known time; each request ends after ``steps`` steps
    with the request's text.

    Each replica appends the rows of every step to ``<record_dir>/<pid>.txt``, so a benchmark
    sees the batches of every replica (see :func:`recorded_batch_sizes`).
    """

    def __init__(self, config: ModelConfig, cost: BatchCost, record_dir: Path) -> None:
        self._config = config
        self._cost = cost
        self._record = record_dir / f"{os.getpid()}.txt"
        self._left: dict[int, tuple[int, str]] = {}

    @property
    def max_rows(self) -> int:
        """The configured rows."""
        return self._config.max_rows

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        """Take the step's time (see ``BatchCost.run_step``); answer the rows that are done."""
        for key in cancelled:
            self._left.pop(key, None)
        self._left.update((a.key, (self._cost.steps, a.request.text)) for a in admitted)
        if not self._left:
            return []
        self._cost.run_step(len(self._left))
        with self._record.open("a") as record:
            record.write(f"{len(self._left)}\n")
        events = []
        for key, (left, text) in list(self._left.items()):
            if left > 1:
                self._left[key] = (left - 1, text)
                continue
            del self._left[key]
            result = ModelResult(text=f"emulated:{text}", prompt_tokens=1, completion_tokens=1)
            events.append(RowEvent(key, outcome=result))
        return events

    def clear(self) -> None:
        """Drop every row."""
        self._left.clear()

    def info(self) -> ModelInfo:
        """What a model replica describes; the device is named as emulated."""
        return ModelInfo(
            source="emulated-accelerator",
            family="opt",
            dtype="float16",
            device="emulated",
            num_query_tokens=32,
        )

    def stats(self) -> EngineStats:
        """No images are encoded."""
        return EngineStats()


def emulated_model(
    cost: BatchCost, record_dir: Path
) -> Callable[[ModelConfig], EmulatedAcceleratorModel]:
    """A model factory for ``build_application``."""
    return functools.partial(EmulatedAcceleratorModel, cost=cost, record_dir=record_dir)


def recorded_batch_sizes(record_dir: Path) -> dict[str, Counter[int]]:
    """Batch sizes each replica (by process id) has recorded so far."""
    return {
        path.stem: Counter(int(line) for line in path.read_text().split())
        for path in sorted(record_dir.glob("*.txt"))
    }
