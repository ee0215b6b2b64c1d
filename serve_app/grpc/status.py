"""The gRPC status of each of the service's errors, and the trailing metadata that names it.

Every failed call carries the service's error code in the trailing metadata ``error-code``
(the ``code`` of the HTTP API's error body), the field at fault in ``error-param`` when there
is one, and, for an overloaded or unavailable model, when to retry in ``retry-after-ms``.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from serve_app.contract.errors import (
    AuthenticationError,
    GenerationFailedError,
    ModelNotFoundError,
    ModelOverloadedError,
    ModelUnavailableError,
    RequestTimeoutError,
    ServeAppError,
)

ERROR_CODE_KEY = "error-code"
ERROR_PARAM_KEY = "error-param"
RETRY_AFTER_KEY = "retry-after-ms"

_STATUS_OF: dict[type[ServeAppError], grpc.StatusCode] = {
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    ModelOverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ModelUnavailableError: grpc.StatusCode.UNAVAILABLE,
    RequestTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    GenerationFailedError: grpc.StatusCode.INTERNAL,
}
"""Errors with a status of their own; every other error is the caller's: INVALID_ARGUMENT."""


@dataclass(frozen=True)
class CallStatus:
    """How a failed call ends: its status, the details string and the trailing metadata."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...]


def status_of(error: ServeAppError) -> CallStatus:
    """The gRPC ending of a call that failed with ``error``."""
    code = next(
        (status for kind, status in _STATUS_OF.items() if isinstance(error, kind)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    metadata = [(ERROR_CODE_KEY, error.code)]
    if error.param is not None:
        metadata.append((ERROR_PARAM_KEY, error.param))
    if error.retry_after_s is not None:
        metadata.append((RETRY_AFTER_KEY, str(round(error.retry_after_s * 1000))))
    return CallStatus(code, error.message, tuple(metadata))
