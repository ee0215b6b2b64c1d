"""Deterministic synthetic images and the ``POST /v1/vqa`` bodies (and ``Vqa`` gRPC requests)
built from them."""

from __future__ import annotations

import base64
import io
import json
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from urllib3 import encode_multipart_formdata

from benchmarks.loadgen import Call
from serve_app.grpc.generated import blip2_pb2 as pb

ImageKind = Literal["small", "medium", "large"]
SIZES: dict[ImageKind, tuple[tuple[int, int], str]] = {
    "small": ((64, 64), "PNG"),
    "medium": ((640, 640), "JPEG"),
    "large": ((1024, 768), "JPEG"),
}
"""``small``: a 64x64 PNG; ``medium``: a 640x640 JPEG; ``large``: a 1024x768 JPEG, a typical
phone photo once downscaled."""

MEDIA_TYPES: dict[ImageKind, str] = {
    "small": "image/png",
    "medium": "image/jpeg",
    "large": "image/jpeg",
}
VQA_METHOD = "/blip2.v1.Blip2Service/Vqa"

QUESTIONS = (
    "What is in the picture?",
    "How many shapes are there?",
    "What colour is the biggest shape?",
    "Is there a circle?",
)


def image_bytes(index: int, kind: ImageKind) -> bytes:
    """Image ``index`` of a kind: a noisy gradient with a few shapes, encoded."""
    (width, height), fmt = SIZES[kind]
    rng = np.random.default_rng(index)
    ys, xs = np.mgrid[0:height, 0:width]
    base = rng.uniform(60, 200, size=3)
    slope = rng.uniform(-0.15, 0.15, size=(2, 3)) * (256 / max(width, height))
    pixels = base + xs[..., None] * slope[0] + ys[..., None] * slope[1]
    pixels += rng.normal(0, 12, size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        side = int(rng.integers(width // 10, width // 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.ellipse([x, y, x + side, y + side], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def vqa_calls(kind: ImageKind = "small", count: int = 8) -> list[Call]:
    """``count`` different ``POST /v1/vqa`` JSON bodies with base64 images of ``kind``."""
    calls = []
    for index in range(count):
        body = {
            "image": {"data": base64.b64encode(image_bytes(index, kind)).decode()},
            "question": QUESTIONS[index % len(QUESTIONS)],
        }
        calls.append(Call("/v1/vqa", json.dumps(body).encode()))
    return calls


def grpc_vqa_calls(kind: ImageKind = "small", count: int = 8) -> list[Call]:
    """The same questions and images as :func:`vqa_calls`, as serialized gRPC ``Vqa`` requests
    with the images as raw bytes."""
    return [
        Call(
            VQA_METHOD,
            pb.VqaRequest(
                question=QUESTIONS[index % len(QUESTIONS)],
                image=pb.Image(data=image_bytes(index, kind), media_type=MEDIA_TYPES[kind]),
            ).SerializeToString(),
        )
        for index in range(count)
    ]


def upload_calls(kind: ImageKind = "small", count: int = 8) -> list[Call]:
    """The same questions and images as :func:`vqa_calls`, as multipart uploads (raw bytes)."""
    calls = []
    for index in range(count):
        body, content_type = encode_multipart_formdata(
            [
                ("question", QUESTIONS[index % len(QUESTIONS)]),
                ("image", (f"{index}.img", image_bytes(index, kind), MEDIA_TYPES[kind])),
            ]
        )
        calls.append(Call("/v1/vqa", body, content_type))
    return calls
