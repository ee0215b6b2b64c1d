"""An image as a caller gave it (URL, base64 or data URI, raw bytes) to an RGB array."""

from __future__ import annotations

import asyncio

import numpy as np
from numpy.typing import NDArray

from serve_app.config import LimitsConfig
from serve_app.contract.api import ImageSource
from serve_app.contract.errors import InvalidImageError, UnsupportedMediaTypeError
from serve_app.images.data_uri import decode_base64_image
from serve_app.images.decode import decode_image
from serve_app.images.url_fetch import fetch_image_url, is_image_content_type


async def load_image(image: ImageSource, limits: LimitsConfig) -> NDArray[np.uint8]:
    """Fetch or decode ``image`` off the event loop into an RGB ``uint8`` array."""
    if image.upload is not None:
        upload = image.upload
        return await asyncio.to_thread(decode_upload, upload.content, upload.content_type, limits)
    if image.url is not None:
        raw = await fetch_image_url(image.url, limits, "image.url")
        return await asyncio.to_thread(decode_image, raw, limits, "image.url")
    if image.data is not None:
        return await asyncio.to_thread(_decode_data, image.data, limits)
    raise InvalidImageError("give exactly one of 'url' or 'data'", "image")


def _decode_data(data: str, limits: LimitsConfig) -> NDArray[np.uint8]:
    return decode_image(decode_base64_image(data, limits, "image.data"), limits, "image.data")


def decode_upload(raw: bytes, content_type: str | None, limits: LimitsConfig) -> NDArray[np.uint8]:
    """Decode a multipart upload's bytes (see :func:`decode_image`); CPU work, call off-loop.

    Raises:
        UnsupportedMediaTypeError: A content type other than ``image/*`` or octet-stream.
    """
    if not is_image_content_type(content_type):
        raise UnsupportedMediaTypeError(
            "the uploaded file must be image/* or application/octet-stream", "image"
        )
    return decode_image(raw, limits, "image")
