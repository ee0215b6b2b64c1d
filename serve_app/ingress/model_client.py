"""Calling the model deployment: typed calls, Ray's failures as this service's typed errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from serve_app.contract.errors import (
    GenerationFailedError,
    ModelOverloadedError,
    ModelUnavailableError,
    ServeAppError,
)
from serve_app.model.types import ModelRequest, ModelResult, ReplicaInfo

logger = logging.getLogger("ray.serve")

ResultT = TypeVar("ResultT")


class ModelStream(Protocol):
    """A streamed generation: its events (text, then the result), cancellable."""

    def __aiter__(self) -> AsyncIterator[str | ModelResult]: ...

    async def __anext__(self) -> str | ModelResult: ...

    def cancel(self) -> None: ...


def as_service_error(exc: BaseException) -> BaseException:
    """The error a caller should see for a failed model call (unknown errors pass through)."""
    if isinstance(exc, BackPressureError):
        return ModelOverloadedError("the model is overloaded; retry shortly")
    if isinstance(exc, DeploymentUnavailableError | ReplicaUnavailableError | RayActorError):
        return ModelUnavailableError("no model replica is available; retry shortly")
    if isinstance(exc, RayTaskError):
        if isinstance(exc.cause, ServeAppError):
            return exc.cause
        return GenerationFailedError("the model failed on this request")
    return exc


async def until_done(response: Any) -> Any:
    """Await a model call; a caller that stops waiting (deadline, disconnect) cancels it.

    Serve does not cancel a call whose awaiting task is cancelled, so without this the
    model replica would still run the work of a request its caller has given up on.
    """
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


async def call_with_retry(send: Callable[[], Awaitable[ResultT]]) -> ResultT:
    """Make a model call; if its replica dies mid-request, make it once more elsewhere.

    Generation is idempotent, so a retry is safe.
    """
    try:
        return await send()
    except (ReplicaUnavailableError, RayActorError):
        logger.warning("A model replica died mid-request; retrying it once")
    except Exception as exc:
        raise as_service_error(exc) from None
    try:
        return await send()
    except Exception as exc:
        raise as_service_error(exc) from None


class ModelClient:
    """The model deployment as the ingress calls it: typed calls, typed errors, one retry."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle
        self._streaming = handle.options(stream=True)

    async def generate(self, request: ModelRequest) -> ModelResult:
        """Generate for one request (it is batched with the others in flight)."""
        result: ModelResult = await call_with_retry(
            lambda: until_done(self._handle.generate.remote(request))
        )
        return result

    async def open_stream(self, request: ModelRequest) -> tuple[ModelStream, str | ModelResult]:
        """Start a streamed generation: the stream and its first event (text or the result)."""
        return await call_with_retry(lambda: self._open_stream(request))

    async def describe(self) -> ReplicaInfo:
        """What a model replica serves, and its live batching settings."""
        info: ReplicaInfo = await call_with_retry(
            lambda: until_done(self._handle.describe.remote())
        )
        return info

    async def _open_stream(self, request: ModelRequest) -> tuple[ModelStream, str | ModelResult]:
        stream: Any = self._streaming.generate_stream.remote(request)
        try:
            return stream, await anext(stream)
        except BaseException:
            stream.cancel()
            raise
