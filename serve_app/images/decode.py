"""Untrusted image bytes to a checked RGB ``uint8`` array (CPU work: call it off the loop).

Everything a caller controls is bounded before it costs memory or CPU: the byte count before
parsing, and the pixel count read from the header before any pixel is decoded. Only PNG, JPEG,
GIF, WEBP, BMP and TIFF are accepted. Any failure on bad bytes is a
:class:`~serve_app.contract.errors.ServeAppError` with a message that leaks no internals.
"""

from __future__ import annotations

import logging
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
from serve_app.contract.errors import InvalidImageError, PayloadTooLargeError, ServeAppError

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
            _check_size(image, limits, param)
            image.load()
            _check_size(image, limits, param)  # a GIF frame may extend the canvas
            return _to_rgb_array(_apply_orientation(image))
    except ServeAppError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLargeError("the image has too many pixels", param) from None
    except Exception:
        _log.debug("image decoding failed", exc_info=True)
        raise InvalidImageError(_CORRUPT, param) from None


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


def _check_size(image: Image.Image, limits: LimitsConfig, param: str) -> None:
    """Pixels, decoded bytes (bands and depth counted) and shape, all from the header."""
    width, height = image.size
    cap = limits.max_image_pixels
    if Image.MAX_IMAGE_PIXELS is not None:  # Pillow's own hard limit, if raised by the operator
        cap = min(cap, 2 * Image.MAX_IMAGE_PIXELS)
    if width * height > cap:
        raise PayloadTooLargeError(f"the image has {width}x{height} pixels, more than {cap}", param)
    budget = 3 * cap  # the bytes of an RGB image at the pixel cap
    decoded = width * height * _bytes_per_pixel(image)
    if decoded > budget:
        raise PayloadTooLargeError(
            f"the image decodes to {decoded} bytes ({image.mode}, {width}x{height}), "
            f"more than {budget}",
            param,
        )
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


def _bytes_per_pixel(image: Image.Image) -> int:
    """What one pixel costs while decoding and converting: its own bands and depth, at least
    the RGB result, and RGBA for anything composited on white."""
    mode = image.mode
    depth = 4 if mode in ("I", "F") else 2 if mode.startswith("I;16") else 1
    own = depth * Image.getmodebands(mode)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        own = max(own, 4)
    return max(own, 3)


def _scale_to_uint8(values: NDArray[Any], mode: str) -> NDArray[np.uint8]:
    """Map 16-bit, 32-bit integer or float gray levels to 0..255 (no 64-bit copies)."""
    if mode == "F":
        floats = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if floats.max() <= 1.0:  # normalised [0, 1] data
            floats *= 255.0
        return np.clip(np.rint(floats, out=floats), 0, 255, out=floats).astype(np.uint8)
    ints = values.astype(np.int32)
    if mode != "I" or ints.max() > 255:  # 16-bit range (mode "I" is how Pillow holds it too)
        ints = np.clip(ints, 0, 65535, out=ints) >> 8
    return np.clip(ints, 0, 255, out=ints).astype(np.uint8)
