"""An image as a caller gave it (URL, base64 or data URI, raw bytes) to an RGB array."""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from serve_app.config import LimitsConfig
from serve_app.contract.api import ImageSource
from serve_app.contract.errors import InvalidImageError, UnsupportedMediaTypeError
from serve_app.images.data_uri import decode_base64_image
from serve_app.images.decode import decode_image
from serve_app.images.resize import fit_to_model_input
from serve_app.images.url_fetch import fetch_image_url, is_image_content_type
from serve_app.model.types import ModelImageInput

DECODE_THREADS = 4
"""Images a replica decodes (or resizes) at once, on threads of their own."""

INLINE_DECODE_BYTES = 32 * 1024
INLINE_DECODE_PIXELS = 256 * 256
"""Images of at most this many bytes and, by their header, pixels are decoded and resized on
the event loop: that takes less than a hop to a decoding thread and back costs. (A small file
can hold a huge image, hence the header check.)"""

_DECODERS = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="image-decode")

ResultT = TypeVar("ResultT")


async def off_loop(work: Callable[..., ResultT], *args: Any) -> ResultT:
    """Run CPU-bound image work on the bounded decoding threads, not on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_DECODERS, work, *args)


async def load_image(
    image: ImageSource,
    limits: LimitsConfig,
    fetching: AbstractContextManager[object] | None = None,
    fit: ModelImageInput | None = None,
) -> NDArray[np.uint8]:
    """Fetch and decode ``image`` into an RGB ``uint8`` array, resized to ``fit`` if given.

    Decoding and resizing run in one go on the decoding threads, or on the event loop for a
    small image. A URL's fetch (waiting on another server) runs inside ``fetching``, if given.
    """
    if image.upload is not None:
        upload = image.upload
        raw = upload.content
        decode = functools.partial(decode_upload, raw, upload.content_type, limits)
    elif image.url is not None:
        with fetching or nullcontext():
            raw = await fetch_image_url(image.url, limits, "image.url")
        decode = functools.partial(decode_image, raw, limits, "image.url")
    elif image.data is not None:
        if len(image.data) > INLINE_DECODE_BYTES * 4 // 3:
            return await off_loop(_fitted, functools.partial(_decode_data, image.data, limits), fit)
        raw = decode_base64_image(image.data, limits, "image.data")
        decode = functools.partial(decode_image, raw, limits, "image.data")
    else:
        raise InvalidImageError("give exactly one of 'url' or 'data'", "image")
    if decodes_inline(raw):
        return _fitted(decode, fit)
    return await off_loop(_fitted, decode, fit)


def _fitted(
    decode: Callable[[], NDArray[np.uint8]], fit: ModelImageInput | None
) -> NDArray[np.uint8]:
    pixels = decode()
    return pixels if fit is None else fit_to_model_input(pixels, fit)


def decodes_inline(raw: bytes) -> bool:
    """Whether an encoded image is small enough, in bytes and in header pixels, to decode on
    the event loop."""
    if len(raw) > INLINE_DECODE_BYTES:
        return False
    try:
        with Image.open(io.BytesIO(raw)) as header:
            width, height = header.size
    except Exception:  # not an image: decoding fails at once, with its typed error
        return True
    return width * height <= INLINE_DECODE_PIXELS


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
