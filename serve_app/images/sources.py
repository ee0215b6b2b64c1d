"""An image as a caller gave it (URL, base64 or data URI, raw bytes) to an RGB array."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from serve_app.config import LimitsConfig
from serve_app.contract.api import ImageSource
from serve_app.contract.errors import InvalidImageError, UnsupportedMediaTypeError
from serve_app.images.data_uri import decode_base64_image
from serve_app.images.decode import decode_image
from serve_app.images.url_fetch import fetch_image_url, is_image_content_type

DECODE_THREADS = 4
"""Images a replica decodes (or resizes) at once, on threads of their own."""

_DECODERS = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="image-decode")

ResultT = TypeVar("ResultT")


async def off_loop(work: Callable[..., ResultT], *args: Any) -> ResultT:
    """Run CPU-bound image work on the bounded decoding threads, not on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_DECODERS, work, *args)


async def load_image(
    image: ImageSource,
    limits: LimitsConfig,
    fetching: AbstractContextManager[object] | None = None,
) -> NDArray[np.uint8]:
    """Fetch or decode ``image`` off the event loop into an RGB ``uint8`` array.

    A URL's fetch (waiting on another server) runs inside ``fetching``, if given.
    """
    if image.upload is not None:
        upload = image.upload
        return await off_loop(decode_upload, upload.content, upload.content_type, limits)
    if image.url is not None:
        with fetching or nullcontext():
            raw = await fetch_image_url(image.url, limits, "image.url")
        return await off_loop(decode_image, raw, limits, "image.url")
    if image.data is not None:
        return await off_loop(_decode_data, image.data, limits)
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
