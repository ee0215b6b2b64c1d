"""Fakes for what a test does not exercise (named as fakes)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from serve_app.config import BatchingConfig, ModelConfig
from serve_app.model.types import (
    GenerationObserver,
    ModelImageInput,
    ModelInfo,
    ModelRequest,
    ModelResult,
    ReplicaInfo,
)


class SlowFakeModel:
    """A stand-in model whose every batch takes a fixed time: for autoscaling and overload tests.

    It echoes the request's text so callers can check they got their own answer.
    """

    batch_seconds = 0.3

    def __init__(self, config: ModelConfig) -> None:
        self._config = config

    def generate(
        self, requests: Sequence[ModelRequest], observer: GenerationObserver | None = None
    ) -> list[ModelResult | Exception]:
        time.sleep(self.batch_seconds)
        return [
            ModelResult(text=f"fake:{r.text}", prompt_tokens=1, completion_tokens=1)
            for r in requests
        ]

    def info(self) -> ModelInfo:
        return ModelInfo(
            source="slow-fake", family="opt", dtype="float32", device="cpu", num_query_tokens=0
        )


def slow_fake_model(config: ModelConfig) -> SlowFakeModel:
    """Model factory for ``build_application``."""
    return SlowFakeModel(config)


class FaultyFakeModel(SlowFakeModel):
    """A fast stand-in model that misbehaves on command, for fault-tolerance tests.

    - ``crash-once:<path>``: the first replica to see it creates ``path`` and dies at once
      (the process exits mid-request); later ones answer normally.
    - ``crash-always``: every replica that sees it dies.
    - ``break-batch``: the whole batch raises, as a broken accelerator would.
    """

    batch_seconds = 0.05

    def generate(
        self, requests: Sequence[ModelRequest], observer: GenerationObserver | None = None
    ) -> list[ModelResult | Exception]:
        for request in requests:
            if request.text == "crash-always":
                os._exit(1)
            if request.text.startswith("crash-once:"):
                marker = Path(request.text.removeprefix("crash-once:"))
                if not marker.exists():
                    marker.touch()
                    os._exit(1)
            if request.text == "break-batch":
                raise RuntimeError("the accelerator fell over at 0xdeadbeef in /opt/secret")
        return super().generate(requests, observer)


def faulty_fake_model(config: ModelConfig) -> FaultyFakeModel:
    """Model factory for ``build_application``."""
    return FaultyFakeModel(config)


class PacedObserver:
    """Passes streamed text on after a pause: paces generation like a slower accelerator."""

    def __init__(self, inner: GenerationObserver, step_seconds: float) -> None:
        self._inner = inner
        self._step_seconds = step_seconds

    def on_text(self, index: int, delta: str) -> None:
        time.sleep(self._step_seconds)
        self._inner.on_text(index, delta)

    def is_cancelled(self, index: int) -> bool:
        return self._inner.is_cancelled(index)


class PacedBlip2Model:
    """The real BLIP-2 wrapper with a fake pace: each streamed step waits ``step_seconds``, so
    tests can see text arrive over time. Every result is appended to ``record`` as JSON."""

    def __init__(self, config: ModelConfig, step_seconds: float, record: Path) -> None:
        from serve_app.model.blip2 import Blip2Model

        self._model = Blip2Model.load(config)
        self._step_seconds = step_seconds
        self._record = record

    def generate(
        self, requests: Sequence[ModelRequest], observer: GenerationObserver | None = None
    ) -> list[ModelResult | Exception]:
        paced = PacedObserver(observer, self._step_seconds) if observer else None
        results = self._model.generate(requests, paced)
        with self._record.open("a") as record:
            for request, result in zip(requests, results, strict=True):
                if isinstance(result, ModelResult):
                    line = {"text": request.text, "completion_tokens": result.completion_tokens}
                    record.write(json.dumps(line) + "\n")
        return results

    def info(self) -> ModelInfo:
        return self._model.info()


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
    """The real BLIP-2 wrapper on a fake accelerator that a request can break for good.

    After the request ``gpu-fault``, every ``generate`` of this process raises the error a
    CUDA context poisoned by an illegal memory access raises; the real ``Blip2Model`` turns
    each into a per-request error, as it would on a GPU. A new replica starts healthy.
    """

    def __init__(self, config: ModelConfig) -> None:
        from serve_app.model.blip2 import Blip2Model

        self._model = Blip2Model.load(config)
        self._broken = False
        hf_model = self._model._model
        generate = hf_model.generate

        def accelerator(**kwargs: Any) -> Any:
            if self._broken:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return generate(**kwargs)

        hf_model.generate = accelerator

    def generate(
        self, requests: Sequence[ModelRequest], observer: GenerationObserver | None = None
    ) -> list[ModelResult | Exception]:
        self._broken = self._broken or any(r.text == "gpu-fault" for r in requests)
        return self._model.generate(requests, observer)

    def info(self) -> ModelInfo:
        return self._model.info()


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
