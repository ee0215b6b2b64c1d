"""``ModelCalls``: what every handler does around a call to one model deployment.

Readiness (whether a replica answered lately), load shedding (the backlog ahead of a request),
the request's deadline, and decoding the caller's image straight to the model's input size.
No HTTP and no Ray here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from serve_app.config import LimitsConfig
from serve_app.contract.api import ImageSource
from serve_app.contract.errors import RequestTimeoutError
from serve_app.images.resize import fit_to_model_input
from serve_app.images.sources import load_image, off_loop
from serve_app.ingress.admission import Admission
from serve_app.ingress.availability import ModelAvailability
from serve_app.model.types import ModelImageInput

ResultT = TypeVar("ResultT")

READY_TIMEOUT_S = 5.0
"""How long the first readiness probe (and each background probe) waits for a replica."""


class ImageObserver(Protocol):
    """Told about every image decoded (metrics)."""

    def on_image(self, seconds: float, size: int | None) -> None: ...


class ModelCalls:
    """Calls to one model deployment within the caller's limits.

    Args:
        describe: Asks a replica what it serves (readiness probes use it).
        image_input: Asks a replica the size its model resizes images to (None: any size).
        limits: The caller's limits (deadline, load shedding, image caps).
        observer: Told about every image decoded.
    """

    def __init__(
        self,
        describe: Callable[[], Awaitable[Any]],
        image_input: Callable[[], Awaitable[ModelImageInput | None]],
        limits: LimitsConfig,
        observer: ImageObserver | None = None,
    ) -> None:
        self._image_input_of_model = image_input
        self._limits = limits
        self._observer = observer
        self.availability = ModelAvailability(describe, probe_timeout_s=READY_TIMEOUT_S)
        self.admission = Admission(limits.max_queue_wait_s)
        self._image_input: ModelImageInput | None = None
        self._image_input_known = False

    async def ask(self, call: Awaitable[ResultT]) -> ResultT:
        """Make a model call, noting whether a replica answered (for readiness)."""
        try:
            result = await call
        except Exception as exc:
            self.availability.record(exc)
            raise
        self.availability.record(None)
        return result

    async def within_deadline(
        self, work: Awaitable[ResultT], deadline: float | None = None
    ) -> ResultT:
        """``work`` within the request's deadline (loop time; from now unless given)."""
        if deadline is None:
            deadline = self.deadline()
        try:
            async with asyncio.timeout_at(deadline):
                return await work
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request did not finish within {self._limits.request_timeout_s:g} s"
            ) from None

    def deadline(self) -> float:
        """The loop time by which a request starting now must finish."""
        return asyncio.get_running_loop().time() + self._limits.request_timeout_s

    async def decode(self, image: ImageSource) -> np.ndarray:
        """The image's pixels, resized to the model's input in the same step once it is known
        (until then an image is checked before the model is asked its input size)."""
        known = self._image_input if self._image_input_known else None
        started = time.perf_counter()
        fetching = self.admission.set_aside()
        pixels = await load_image(image, self._limits, fetching=fetching, fit=known)
        if self._observer is not None:
            self._observer.on_image(time.perf_counter() - started, image.size_hint)
        if not self._image_input_known and (target := await self._model_image_input()):
            pixels = await off_loop(fit_to_model_input, pixels, target)
        return pixels

    async def _model_image_input(self) -> ModelImageInput | None:
        """The model's image input size, asked of a replica once; None: send images as decoded.

        Resizing here, exactly as the model's processor would, sends the model replica a small
        array instead of the full image and takes the resize off the replica's CPU.
        """
        if not self._image_input_known:
            self._image_input = await self.ask(self._image_input_of_model())
            self._image_input_known = True
        return self._image_input
