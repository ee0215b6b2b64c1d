"""Small synthetic test images."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def make_image(index: int, size: int = 48) -> Image.Image:
    """A deterministic image: a coloured background with a differently coloured square."""
    background = COLORS[index % len(COLORS)]
    foreground = COLORS[(index * 3 + 1) % len(COLORS)]
    image = Image.new("RGB", (size, size), background)
    offset = (index * 7) % (size // 2)
    ImageDraw.Draw(image).rectangle(
        [offset, offset, offset + size // 3, offset + size // 3], fill=foreground
    )
    return image


def image_bytes(index: int, fmt: str = "PNG", size: int = 48) -> bytes:
    """``make_image(index)`` encoded as ``fmt``."""
    buffer = io.BytesIO()
    make_image(index, size).save(buffer, format=fmt)
    return buffer.getvalue()
