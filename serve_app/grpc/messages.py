"""``blip2.v1`` messages to and from the typed requests and responses of the native API.

Requests become the same pydantic models HTTP bodies do, so both edges share one validation
path: a proto field out of range fails exactly as its JSON twin does, naming the same field.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from serve_app.contract.api import (
    CaptionRequest,
    GenerateRequest,
    GenerationParams,
    ImageSource,
    VQARequest,
)
from serve_app.contract.errors import InvalidRequestError, invalid_request
from serve_app.grpc.generated import blip2_pb2 as pb

ModelT = TypeVar("ModelT", bound=BaseModel)
MessageT = TypeVar("MessageT", bound=Message)
ImageMessage = pb.VqaRequest | pb.CaptionRequest | pb.GenerateRequest
"""A request message with an image and generation settings."""


def vqa_request(message: pb.VqaRequest) -> VQARequest:
    """A ``Vqa`` call's request."""
    return _image_request(VQARequest, message, question=message.question)


def caption_request(message: pb.CaptionRequest) -> CaptionRequest:
    """A ``Caption`` call's request."""
    prompt = message.prompt if message.HasField("prompt") else None
    return _image_request(CaptionRequest, message, prompt=prompt)


def generate_request(message: pb.GenerateRequest) -> GenerateRequest:
    """A ``Generate`` or ``GenerateStream`` call's request."""
    return _image_request(GenerateRequest, message, prompt=message.prompt)


def _image_request(model: type[ModelT], message: ImageMessage, **text: str | None) -> ModelT:
    """``model`` from the message's image and settings and the given text fields."""
    return _validated(model, image=image_source(message), params=generation_params(message), **text)


def image_source(message: ImageMessage) -> ImageSource:
    """The request's image: its bytes as an upload (no base64 step), or its URL."""
    image = message.image
    source = image.WhichOneof("source") if message.HasField("image") else None
    if source == "data":
        return ImageSource.from_upload(image.data, image.media_type or None)
    if image.media_type:
        raise InvalidRequestError(
            "image.media_type: only for an image given as data", "image.media_type"
        )
    if source == "url":
        return _validated(ImageSource, "image", url=image.url)
    raise InvalidRequestError("image: give exactly one of 'data' or 'url'", "image")


def generation_params(message: ImageMessage) -> GenerationParams:
    """The request's generation settings: the fields it sets, over the server's defaults."""
    given: dict[str, Any] = {field.name: value for field, value in message.params.ListFields()}
    if "stop" in given:
        given["stop"] = tuple(given["stop"])
    return _validated(GenerationParams, "params", **given)


def to_message(model: BaseModel, message: MessageT) -> MessageT:
    """Fill ``message`` from a response model whose field names it shares."""
    return json_format.ParseDict(model.model_dump(mode="json", exclude_none=True), message)


def _validated(model: type[ModelT], within: str | None = None, **fields: Any) -> ModelT:
    """``model`` from ``fields``; a refusal names the field as the request's (``within.x``)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = invalid_request(exc)
        if within is None:
            raise error from None
        param = f"{within}.{error.param}" if error.param else within
        raise InvalidRequestError(f"{within}.{error.message}", param) from None
