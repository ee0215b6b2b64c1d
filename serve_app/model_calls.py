"""Calling the model deployment: Ray's failures mapped to this service's typed errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)

from serve_app.errors import (
    GenerationFailedError,
    ModelOverloadedError,
    ModelUnavailableError,
    ServeAppError,
)

logger = logging.getLogger("ray.serve")

ResultT = TypeVar("ResultT")


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


async def call_with_retry(send: Callable[[], Awaitable[ResultT]]) -> ResultT:
    """Make a model call; if its replica dies mid-request, make it once more elsewhere.

    Generation is idempotent, so a retry is safe. When the caller goes away or its deadline
    passes, Serve cancels the call downstream, so queued work is dropped.
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
