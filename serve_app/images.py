"""Untrusted image input (upload, base64, data URI or URL) to a checked RGB ``uint8`` array.

Everything a caller controls is bounded before it costs memory or CPU: encoded length before
base64 decoding, byte count before parsing, and the pixel count read from the header before any
pixel is decoded. Only PNG, JPEG, GIF, WEBP, BMP and TIFF are accepted. Any failure on bad bytes
is a :class:`~serve_app.errors.ServeAppError` subclass with a message that leaks no internals.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from serve_app.config import LimitsConfig
from serve_app.errors import (
    InvalidBase64Error,
    InvalidImageError,
    PayloadTooLargeError,
    ServeAppError,
    UnsupportedMediaTypeError,
)
from serve_app.schemas import ImageSource
from serve_app.url_fetch import (
    check_url_allowed,
    fetch_image_url,
    is_image_content_type,
    is_public_address,
)

__all__ = [
    "ModelImageInput",
    "check_url_allowed",
    "decode_base64_image",
    "decode_image",
    "decode_upload",
    "fetch_image_url",
    "fit_to_model_input",
    "is_public_address",
    "load_image",
]

_log = logging.getLogger(__name__)

MAX_ASPECT_RATIO = 200
"""Images more elongated than this (long side / short side) are refused."""

# Magic numbers -> Pillow's plugin class. Constructing the class reads the header only, like
# ``Image.open(fp, formats=[...])`` does, but without Pillow's process-global decompression bomb
# check (which warns through the global ``warnings`` machinery); ``limits`` replaces it.
_FORMATS: tuple[tuple[tuple[bytes, ...], type[ImageFile.ImageFile]], ...] = (
    ((b"\x89PNG\r\n\x1a\n",), PngImagePlugin.PngImageFile),
    ((b"\xff\xd8\xff",), JpegImagePlugin.JpegImageFile),
    ((b"GIF87a", b"GIF89a"), GifImagePlugin.GifImageFile),
    ((b"BM",), BmpImagePlugin.BmpImageFile),
    ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), TiffImagePlugin.TiffImageFile),
)
_UNSUPPORTED = "not a supported image format (use PNG, JPEG, GIF, WEBP, BMP or TIFF)"
_CORRUPT = "the image could not be decoded: it is truncated, corrupt or of an unsupported kind"
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def decode_image(raw: bytes, limits: LimitsConfig, param: str = "image") -> NDArray[np.uint8]:
    """Decode untrusted image bytes to a C-contiguous RGB ``uint8`` array of shape (H, W, 3).

    EXIF orientation is applied, animated images give their first frame, transparency is
    composited on white and every mode (palette, CMYK, 16-bit, float, bilevel...) becomes RGB.

    Raises:
        PayloadTooLargeError: More than ``limits.max_image_bytes`` bytes or
            ``limits.max_image_pixels`` pixels (checked from the header, before decoding).
        InvalidImageError: Empty, unsupported format, corrupt, a side under 2 pixels or an
            aspect ratio over 200:1.
    """
    if len(raw) > limits.max_image_bytes:
        raise PayloadTooLargeError(
            f"the image is larger than {limits.max_image_bytes} bytes", param
        )
    if not raw:
        raise InvalidImageError("the image is empty", param)
    try:
        with _open_header(raw, param) as image:
            _check_size(image.size, limits, param)
            image.load()
            _check_size(image.size, limits, param)  # a GIF frame may extend the canvas
            return _to_rgb_array(_apply_orientation(image))
    except ServeAppError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLargeError("the image has too many pixels", param) from None
    except Exception:
        _log.debug("image decoding failed", exc_info=True)
        raise InvalidImageError(_CORRUPT, param) from None


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


async def load_image(source: ImageSource, limits: LimitsConfig) -> NDArray[np.uint8]:
    """Fetch or base64-decode an :class:`ImageSource`, then decode it in a worker thread."""
    if source.url is not None:
        raw = await fetch_image_url(source.url, limits, "image.url")
        return await asyncio.to_thread(decode_image, raw, limits, "image.url")
    if source.data is not None:
        return await asyncio.to_thread(_decode_data, source.data, limits)
    raise InvalidImageError("give exactly one of 'url' or 'data'", "image")


def _decode_data(data: str, limits: LimitsConfig) -> NDArray[np.uint8]:
    return decode_image(decode_base64_image(data, limits, "image.data"), limits, "image.data")


@dataclass(frozen=True)
class ModelImageInput:
    """The fixed size a model's image processor resizes every image to, and Pillow's filter.

    A model reports it (``describe()["image_input"]``) only when resizing with Pillow, with
    that filter, gives exactly the pixels its own processor makes.
    """

    width: int
    height: int
    resample: int

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> ModelImageInput | None:
        """Read it from a model replica's ``describe()``; None if the model reports none."""
        value = described.get("image_input")
        return None if value is None else cls(**value)


def fit_to_model_input(image: NDArray[np.uint8], target: ModelImageInput) -> NDArray[np.uint8]:
    """Resize an RGB array to the model's input as its image processor would; CPU work.

    The model then sees the same pixels (resizing an image to its own size changes nothing),
    while the array sent to the model replica shrinks, e.g. from 2.4 MB to 3 KB.
    """
    if image.shape[:2] == (target.height, target.width):
        return image
    resample = Image.Resampling(target.resample)
    resized = Image.fromarray(image).resize((target.width, target.height), resample=resample)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


def _open_header(raw: bytes, param: str) -> ImageFile.ImageFile:
    """Parse the header only (no pixels) of a supported format."""
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return WebPImagePlugin.WebPImageFile(BytesIO(raw))
    for magics, plugin in _FORMATS:
        if raw.startswith(magics):
            return plugin(BytesIO(raw))
    raise InvalidImageError(_UNSUPPORTED, param)


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        _log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return image


def _check_size(size: tuple[int, int], limits: LimitsConfig, param: str) -> None:
    width, height = size
    cap = limits.max_image_pixels
    if Image.MAX_IMAGE_PIXELS is not None:  # Pillow's own hard limit, if raised by the operator
        cap = min(cap, 2 * Image.MAX_IMAGE_PIXELS)
    if width * height > cap:
        raise PayloadTooLargeError(f"the image has {width}x{height} pixels, more than {cap}", param)
    if min(width, height) < 2:
        raise InvalidImageError("the image must be at least 2 pixels on each side", param)
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidImageError(f"the image aspect ratio exceeds {MAX_ASPECT_RATIO}:1", param)


def _to_rgb_array(image: Image.Image) -> NDArray[np.uint8]:
    if image.mode in _HIGH_DEPTH_MODES:
        gray = _scale_to_uint8(np.asarray(image), image.mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, np.newaxis], 3, axis=2))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _scale_to_uint8(values: NDArray[Any], mode: str) -> NDArray[np.uint8]:
    """Map 16-bit, 32-bit integer or float gray levels to 0..255."""
    if mode == "F":
        floats = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if floats.max() <= 1.0:  # normalised [0, 1] data
            floats = floats * 255.0
        return np.clip(np.rint(floats), 0, 255).astype(np.uint8)
    ints = values.astype(np.int64)
    if mode != "I" or ints.max() > 255:  # 16-bit range (mode "I" is how Pillow holds it too)
        ints = np.clip(ints, 0, 65535) >> 8
    return np.clip(ints, 0, 255).astype(np.uint8)
