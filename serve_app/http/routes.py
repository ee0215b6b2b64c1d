"""The native HTTP API's endpoint table: each route names the typed handler that serves it.

A route takes its request model as a JSON body or as a multipart form (the image as a file
part); the handler of the same name on ``Blip2Handlers`` answers it, as it answers handle
callers. Adding an operation is one handler and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from serve_app.contract.api import (
    CaptionRequest,
    CaptionResponse,
    GenerateRequest,
    GenerateResponse,
    VQARequest,
    VQAResponse,
)


@dataclass(frozen=True)
class ImageRoute:
    """``POST path`` with an image: parsed into ``request``, answered by ``handler``."""

    path: str
    handler: str
    request: type[BaseModel]
    response: type[BaseModel]
    summary: str


IMAGE_ROUTES = (
    ImageRoute("/v1/vqa", "vqa", VQARequest, VQAResponse, "Answer a question about an image."),
    ImageRoute(
        "/v1/caption",
        "caption",
        CaptionRequest,
        CaptionResponse,
        "Caption an image, optionally continuing a prefix.",
    ),
    ImageRoute(
        "/v1/generate",
        "generate",
        GenerateRequest,
        GenerateResponse,
        "Continue a raw prompt about an image.",
    ),
)
"""Every native inference route."""
