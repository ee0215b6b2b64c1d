"""Fakes for what a test does not exercise (named as fakes)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from serve_app.config import BatchingConfig, ModelConfig
from serve_app.engine.types import Admission, EngineStats, RowEvent
from serve_app.model.types import (
    ModelImageInput,
    ModelInfo,
    ModelRequest,
    ModelResult,
    ReplicaInfo,
)


class SlowFakeModel:
    """A stand-in engine whose every step takes a fixed time and answers each request it
    admitted: for autoscaling and overload tests.

    It echoes the request's text so callers can check they got their own answer.
    """

    step_seconds = 0.3

    def __init__(self, config: ModelConfig) -> None:
        self._config = config

    @property
    def max_rows(self) -> int:
        return self._config.max_rows

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        if admitted:
            time.sleep(self.step_seconds)
        return [RowEvent(a.key, outcome=self.answer(a.request, len(admitted))) for a in admitted]

    def answer(self, request: ModelRequest, rows: int) -> ModelResult:
        return ModelResult(
            text=f"fake:{request.text}", prompt_tokens=1, completion_tokens=1, batch_size=rows
        )

    def clear(self) -> None:
        pass

    def info(self) -> ModelInfo:
        return ModelInfo(
            source="slow-fake", family="opt", dtype="float32", device="cpu", num_query_tokens=0
        )

    def stats(self) -> EngineStats:
        return EngineStats()


def slow_fake_model(config: ModelConfig) -> SlowFakeModel:
    """Model factory for ``build_application``."""
    return SlowFakeModel(config)


class RecordingFakeModel(SlowFakeModel):
    """A fast stand-in engine that appends the routing key of every image it is asked about to
    ``<record_dir>/<pid>.txt``: which replica saw which image (the model is not under test)."""

    step_seconds = 0.01

    def __init__(self, config: ModelConfig, record_dir: Path) -> None:
        super().__init__(config)
        self._record = record_dir / f"{os.getpid()}.txt"

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        from serve_app.deployments.image_affinity import image_key

        with self._record.open("a") as record:
            record.writelines(image_key(a.request.image).hex() + "\n" for a in admitted)
        return super().step(admitted, cancelled)


def recording_fake_model(record_dir: Path) -> Callable[[ModelConfig], RecordingFakeModel]:
    """Model factory for ``build_application``."""
    return functools.partial(RecordingFakeModel, record_dir=record_dir)


class FaultyFakeModel(SlowFakeModel):
    """A fast stand-in engine that misbehaves on command, for fault-tolerance tests.

    - ``crash-once:<path>``: the first replica to see it creates ``path`` and dies at once
      (the process exits mid-request); later ones answer normally.
    - ``crash-always``: every replica that sees it dies.
    - ``break-batch``: the whole step raises, as a broken accelerator would.
    """

    step_seconds = 0.05

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        for admission in admitted:
            text = admission.request.text
            if text == "crash-always":
                os._exit(1)
            if text.startswith("crash-once:"):
                marker = Path(text.removeprefix("crash-once:"))
                if not marker.exists():
                    marker.touch()
                    os._exit(1)
            if text == "break-batch":
                raise RuntimeError("the accelerator fell over at 0xdeadbeef in /opt/secret")
        return super().step(admitted, cancelled)


def faulty_fake_model(config: ModelConfig) -> FaultyFakeModel:
    """Model factory for ``build_application``."""
    return FaultyFakeModel(config)


class PacedBlip2Model:
    """The real BLIP-2 engine with a fake pace: each step waits ``step_seconds`` first, so
    tests can see text arrive over time. Every request that ends is appended to ``record`` as
    JSON, with the tokens it got (a cancelled row: the steps it ran)."""

    def __init__(self, config: ModelConfig, step_seconds: float, record: Path) -> None:
        from serve_app.engine.blip2_engine import Blip2Engine

        self._engine = Blip2Engine.load(config)
        self._step_seconds = step_seconds
        self._record = record
        self._running: dict[int, tuple[str, int]] = {}  # key: (text, steps run)

    @property
    def max_rows(self) -> int:
        return self._engine.max_rows

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        time.sleep(self._step_seconds)
        ended = [self._running.pop(key) for key in cancelled if key in self._running]
        self._running.update((a.key, (a.request.text, 0)) for a in admitted)
        events = self._engine.step(admitted, cancelled)
        self._running = {key: (text, steps + 1) for key, (text, steps) in self._running.items()}
        for event in events:
            if event.outcome is not None:
                text, _ = self._running.pop(event.key)
                done = event.outcome
                ended.append((text, done.completion_tokens if isinstance(done, ModelResult) else 0))
        with self._record.open("a") as record:
            for text, tokens in ended:
                record.write(json.dumps({"text": text, "completion_tokens": tokens}) + "\n")
        return events

    def clear(self) -> None:
        self._engine.clear()

    def info(self) -> ModelInfo:
        return self._engine.info()

    def stats(self) -> EngineStats:
        return self._engine.stats()


def paced_blip2(step_seconds: float, record: Path) -> Callable[[ModelConfig], PacedBlip2Model]:
    """Model factory for ``build_application``."""
    return functools.partial(PacedBlip2Model, step_seconds=step_seconds, record=record)


class FakeModelStream:
    """A fake streamed generation from the model deployment: its events, then the end."""

    def __init__(self, events: list[str | ModelResult]) -> None:
        self._events = iter(events)
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[str | ModelResult]:
        return self

    async def __anext__(self) -> str | ModelResult:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        self.cancelled = True


class BrokenGpuBlip2:
    """The real BLIP-2 engine on a fake accelerator that a request can break for good.

    After the request ``gpu-fault``, every forward pass of this process raises the error a
    CUDA context poisoned by an illegal memory access raises; the real ``Blip2Engine`` turns
    each into a per-request error, as it would on a GPU. A new replica starts healthy.
    """

    def __init__(self, config: ModelConfig) -> None:
        from serve_app.engine.blip2_engine import Blip2Engine

        self._engine = Blip2Engine.load(config)
        self._broken = False
        runner = self._engine._runner
        for name in ("image_features", "prefill", "decode"):
            setattr(runner, name, self._accelerator(getattr(runner, name)))

    def _accelerator(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if self._broken:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return forward(*args, **kwargs)

        return run

    @property
    def max_rows(self) -> int:
        return self._engine.max_rows

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        self._broken = self._broken or any(a.request.text == "gpu-fault" for a in admitted)
        return self._engine.step(admitted, cancelled)

    def clear(self) -> None:
        self._engine.clear()

    def info(self) -> ModelInfo:
        return self._engine.info()

    def stats(self) -> EngineStats:
        return self._engine.stats()


def broken_gpu_blip2(config: ModelConfig) -> BrokenGpuBlip2:
    """Model factory for ``build_application``."""
    return BrokenGpuBlip2(config)


FAKE_IMAGE_INPUT = ModelImageInput(width=16, height=16, resample=3)


class FakeModelBackend:
    """Stands in for the model deployment: echoes each request, records what it was sent."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.requests: list[ModelRequest] = []
        self.described = 0
        self._seconds = seconds

    async def generate(self, request: ModelRequest) -> ModelResult:
        self.requests.append(request)
        await asyncio.sleep(self._seconds)
        return ModelResult(
            text=f"{request.task}:{request.text}", prompt_tokens=3, completion_tokens=2
        )

    async def open_stream(self, request: ModelRequest) -> tuple[Any, str | ModelResult]:
        self.requests.append(request)
        result = ModelResult(text="two words", prompt_tokens=3, completion_tokens=2)
        return FakeModelStream(["words", result]), "two "

    async def describe(self) -> ReplicaInfo:
        self.described += 1
        await asyncio.sleep(self._seconds)
        info = ModelInfo(
            source="fake", family="opt", dtype="float32", device="cpu", num_query_tokens=4
        )
        return ReplicaInfo(
            model=info.model_copy(update={"image_input": FAKE_IMAGE_INPUT}),
            batching=BatchingConfig(),
        )
