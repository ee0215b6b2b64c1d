"""Typed errors shared by the ingress, the model deployment and handle callers.

Each error carries the HTTP status and the machine-readable code of the JSON error body
``{"error": {"code": ..., "message": ..., "param": ...}}``. The classes pickle cleanly, so a
handle caller inside a Ray job can ``except InvalidImageError`` just like the ingress does.
"""

from __future__ import annotations

from pydantic import ValidationError


class ServeAppError(Exception):
    """Base class of every error this service reports to a caller."""

    status_code: int = 400
    code: str = "invalid_request"
    retry_after_s: float | None = None
    """Seconds a caller should wait before retrying (errors of a busy or absent model)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message

    @property
    def logged(self) -> bool:
        """Whether the service logs it: its own failures, not a caller's mistakes."""
        return self.status_code >= 500


class InvalidRequestError(ServeAppError):
    """The request is well-formed JSON but a field is missing, unknown or out of range."""

    status_code = 422
    code = "invalid_request"


def invalid_request(exc: ValidationError) -> InvalidRequestError:
    """Describe a pydantic validation failure's first problem as an ``InvalidRequestError``."""
    first = exc.errors(include_url=False, include_input=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "field required"
    return InvalidRequestError(f"{param}: {message}" if param else message, param)


class ModelNotFoundError(ServeAppError):
    """The request names a model this server does not serve."""

    status_code = 404
    code = "model_not_found"


class MalformedBodyError(ServeAppError):
    """The body is not valid JSON or not a well-formed multipart form."""

    status_code = 400
    code = "malformed_body"


class AuthenticationError(ServeAppError):
    """The request carries no valid bearer token."""

    status_code = 401
    code = "unauthorized"


class InvalidImageError(ServeAppError):
    """The image could not be decoded, or its size is unusable."""

    status_code = 400
    code = "invalid_image"


class InvalidBase64Error(ServeAppError):
    """The base64 or data URI image payload is malformed."""

    status_code = 400
    code = "invalid_base64"


class ImageFetchError(ServeAppError):
    """The image URL was refused or could not be fetched."""

    status_code = 400
    code = "image_fetch_failed"


class PayloadTooLargeError(ServeAppError):
    """The body, the image bytes or the image pixels exceed the configured limits."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ServeAppError):
    """The request body or the fetched image has a content type we do not accept."""

    status_code = 415
    code = "unsupported_media_type"


class ModelOverloadedError(ServeAppError):
    """The model is too busy to start this request in time; retry after ``retry_after_s``."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, param: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message, param)
        self.retry_after_s = retry_after_s

    @property
    def logged(self) -> bool:
        """Not logged: overload is expected and counted, and a line per refusal adds load."""
        return False


class ModelUnavailableError(ServeAppError):
    """No model replica is available to take the request."""

    status_code = 503
    code = "model_unavailable"
    retry_after_s = 1.0


class BodyTimeoutError(ServeAppError):
    """The request body did not arrive within its deadline."""

    status_code = 408
    code = "body_timeout"


class RequestTimeoutError(ServeAppError):
    """The request did not finish within its deadline."""

    status_code = 504
    code = "timeout"


class GenerationFailedError(ServeAppError):
    """The model failed on this request (the other requests of its batch are unaffected)."""

    status_code = 500
    code = "generation_failed"
