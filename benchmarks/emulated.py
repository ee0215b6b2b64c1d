"""``EmulatedAcceleratorModel``: a stand-in model whose batch costs a known time.

A batch of ``n`` takes ``fixed_ms + per_item_ms * n``, so the service around it is measured
against an exact limit: one replica serves at most ``max_batch_size / batch_seconds`` per second.
By default the generation thread waits in ``time.sleep``, as a thread waiting on a GPU does. With
``gil_share`` it is GIL-honest: the batch runs as ``steps`` decoding steps, and in each the thread
first runs Python for ``gil_share`` of the step (thread CPU time, as Hugging Face ``generate``
does while it launches a step's kernels), then waits for the rest. Python work elsewhere in the
replica (the event loop, Ray, per-request code) then delays the steps, as it delays a real GPU's.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from serve_app.config import ModelConfig
from serve_app.model.types import GenerationObserver, ModelInfo, ModelRequest, ModelResult


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

    def run(self, batch_size: int) -> None:
        """Take a batch's time: asleep, or step by step holding the GIL for ``gil_share``."""
        total = self.seconds(batch_size)
        if not self.gil_share:
            time.sleep(total)
            return
        step = total / self.steps
        for _ in range(self.steps):
            python_until = time.thread_time() + step * self.gil_share
            while time.thread_time() < python_until:
                pass
            time.sleep(step * (1 - self.gil_share))

    def limit_rps(self, max_batch_size: int, replicas: int = 1) -> float:
        """The most requests per second ``replicas`` can serve: full batches back to back."""
        return replicas * max_batch_size / self.seconds(max_batch_size)


class EmulatedAcceleratorModel:
    """A model whose batches sleep for a known time and answer with the request's text.

    Each replica appends the size of every batch to ``<record_dir>/<pid>.txt``, so a benchmark
    sees the batches of every replica (see :func:`recorded_batch_sizes`).
    """

    def __init__(self, config: ModelConfig, cost: BatchCost, record_dir: Path) -> None:
        self._config = config
        self._cost = cost
        self._record = record_dir / f"{os.getpid()}.txt"

    def generate(
        self, requests: Sequence[ModelRequest], observer: GenerationObserver | None = None
    ) -> list[ModelResult | Exception]:
        """Take the batch's time (see ``BatchCost.run``), then answer every request."""
        self._cost.run(len(requests))
        with self._record.open("a") as record:
            record.write(f"{len(requests)}\n")
        return [
            ModelResult(text=f"emulated:{r.text}", prompt_tokens=1, completion_tokens=1)
            for r in requests
        ]

    def info(self) -> ModelInfo:
        """What a model replica describes; the device is named as emulated."""
        return ModelInfo(
            source="emulated-accelerator",
            family="opt",
            dtype="float16",
            device="emulated",
            num_query_tokens=32,
        )


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
