"""Reading request bodies safely: a byte cap while reading, JSON or multipart, typed errors."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from serve_app.config import LimitsConfig
from serve_app.contract.api import GenerationParams, ImageSource
from serve_app.contract.errors import (
    BodyTimeoutError,
    InvalidRequestError,
    MalformedBodyError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    invalid_request,
)

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_FORM_FIELDS = 16
TEXT_ALLOWANCE_BYTES = 64 * 1024
"""Room in a body for its fields besides the image and the prompt (settings, a URL, JSON)."""
JSON_BYTES_PER_CHAR = 12
"""The most one prompt character can take in JSON: a surrogate pair of ``\\uXXXX`` escapes."""
DATA_URI_PREFIX_BYTES = 256
UPLOAD_FIELD = "image"
IMAGE_BODY_MEDIA_TYPES = ("application/json", "multipart/form-data")


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def body_cap(limits: LimitsConfig, kind: str) -> int:
    """The largest body a request of media type ``kind`` can need: one image at
    ``limits.max_image_bytes`` (base64 in JSON) and its text, never more than
    ``limits.max_body_bytes``."""
    image = limits.max_image_bytes
    if kind != "multipart/form-data":
        image = 4 * math.ceil(image / 3) + DATA_URI_PREFIX_BYTES
    text = TEXT_ALLOWANCE_BYTES + JSON_BYTES_PER_CHAR * limits.max_prompt_chars
    return min(limits.max_body_bytes, image + text)


async def read_body(request: Request, limits: LimitsConfig, max_bytes: int | None = None) -> bytes:
    """Read the body within ``limits.body_timeout_s``, refusing it as soon as it exceeds its
    cap (``max_bytes``, else :func:`body_cap`; declared or streamed)."""
    if max_bytes is None:
        max_bytes = body_cap(limits, media_type(request))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"the request body exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLargeError(f"the request body exceeds {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeoutError(
            f"the request body did not arrive within {limits.body_timeout_s:g} s"
        ) from None
    return b"".join(chunks)


def validate(model: type[ModelT], data: Any) -> ModelT:
    """Validate ``data`` into ``model``, turning the first problem into a typed 422 error."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def parse_json(body: bytes, model: type[ModelT]) -> ModelT:
    """Parse a JSON body into ``model``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, huge integers, deep nesting
        raise MalformedBodyError("the body is not valid JSON") from None
    return validate(model, data)


async def parse_multipart(request: Request, body: bytes, model: type[ModelT]) -> ModelT:
    """Parse a multipart form into ``model``: its one file part is the ``image`` (kept as raw
    bytes), the other parts are text fields.

    Generation settings are given as flat fields (``max_new_tokens=20``) or as a ``params``
    field holding a JSON object.
    """
    replay = _Replay(body)
    form_request = Request(request.scope, receive=replay)
    try:
        form = await form_request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except Exception:
        raise MalformedBodyError("the body is not a well-formed multipart form") from None
    try:
        upload = form.get(UPLOAD_FIELD)
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("a file part named 'image' is required", UPLOAD_FIELD)
        fields = _form_fields(form.multi_items(), model)
        image = ImageSource.from_upload(await upload.read(), upload.content_type)
        return validate(model, {**fields, UPLOAD_FIELD: image})
    finally:
        await form.close()


def _form_fields(items: list[tuple[str, Any]], model: type[BaseModel]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for name, value in items:
        if name == UPLOAD_FIELD:
            continue
        if not isinstance(value, str):
            raise InvalidRequestError("only the 'image' part may be a file", name)
        if name in fields or name in params:
            raise InvalidRequestError("the field is given more than once", name)
        if name == "params":
            given = _params_json(value)
            if repeated := sorted(set(given) & set(params)):
                raise InvalidRequestError("the setting is given more than once", repeated[0])
            params.update(given)
        elif name in GenerationParams.model_fields and name not in model.model_fields:
            params[name] = value
        else:
            fields[name] = value
    if params:
        fields["params"] = params
    return fields


def _params_json(value: str) -> Mapping[str, Any]:
    try:
        params = json.loads(value)
    except (ValueError, RecursionError):  # bad JSON, huge integers, deep nesting
        raise InvalidRequestError("params must be a JSON object", "params") from None
    if not isinstance(params, dict):
        raise InvalidRequestError("params must be a JSON object", "params")
    return params


async def parse_image_request(
    request: Request, model: type[ModelT], limits: LimitsConfig
) -> ModelT:
    """``model`` from a JSON body, or from a multipart form whose file part is the image."""
    kind = require_media_type(request, IMAGE_BODY_MEDIA_TYPES)
    body = await read_body(request, limits)
    if kind == "application/json":
        return parse_json(body, model)
    return await parse_multipart(request, body, model)


def require_media_type(request: Request, accepted: tuple[str, ...]) -> str:
    """Return the request's media type, or raise a 415 naming the accepted ones."""
    kind = media_type(request)
    if kind not in accepted:
        raise UnsupportedMediaTypeError(f"content-type must be one of: {', '.join(accepted)}")
    return kind


class _Replay:
    """An ASGI ``receive`` that hands over an already-read body once."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    async def __call__(self) -> Message:
        body, self._body = self._body, None
        if body is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": body, "more_body": False}
