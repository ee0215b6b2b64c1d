"""Base64 and ``data:`` URI image payloads to bytes, length-checked before decoding."""

from __future__ import annotations

import base64
import binascii

from serve_app.config import LimitsConfig
from serve_app.contract.errors import (
    InvalidBase64Error,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)


def decode_base64_image(data: str, limits: LimitsConfig, param: str = "image.data") -> bytes:
    """Decode plain base64 (standard or URL-safe alphabet) or a ``data:image/...;base64,`` URI.

    The encoded length is checked before anything is decoded; whitespace is ignored.

    Raises:
        PayloadTooLargeError: The payload would exceed ``limits.max_image_bytes``.
        UnsupportedMediaTypeError: A data URI whose media type is not ``image/*``.
        InvalidBase64Error: Malformed base64, or a data URI without ``;base64``.
    """
    max_chars = -(-limits.max_image_bytes // 3) * 4
    too_large = f"the image is larger than {limits.max_image_bytes} bytes"
    if len(data) > max_chars + max_chars // 32 + 1024:  # room for line breaks and a header
        raise PayloadTooLargeError(too_large, param)
    payload = data.strip()
    if payload[:5].lower() == "data:":
        header, comma, payload = payload[5:].partition(",")
        if not comma:
            raise InvalidBase64Error("the data URI has no ',' before its payload", param)
        media_type, *params = (part.strip().lower() for part in header.split(";"))
        if not media_type.startswith("image/"):
            raise UnsupportedMediaTypeError("the data URI media type must be image/*", param)
        if not params or params[-1] != "base64":
            raise InvalidBase64Error("the data URI must be base64-encoded (';base64,')", param)
    payload = "".join(payload.split())
    if len(payload) > max_chars:
        raise PayloadTooLargeError(too_large, param)
    if not payload:
        raise InvalidBase64Error("the image data is empty", param)
    if not payload.isascii():
        raise InvalidBase64Error("the image data is not valid base64", param)
    payload = payload.translate(str.maketrans("-_", "+/"))  # URL-safe alphabet
    payload += "=" * (-len(payload) % 4)  # padding is often left off
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64Error("the image data is not valid base64", param) from None
    if len(raw) > limits.max_image_bytes:
        raise PayloadTooLargeError(too_large, param)
    return raw
