"""Request, response and error models shared by HTTP clients and Python handle callers."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Task = Literal["vqa", "caption", "prompt"]
"""What the model is asked to do: answer a question, caption (optionally after a prefix), or
continue a raw prompt."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class GenerationParams(_Body):
    """Generation settings a caller may set; each is capped by the server's configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None, description="Tokens to generate at most; the server default if unset."
    )
    num_beams: Annotated[int, Field(ge=1, le=64)] = Field(1, description="1 means greedy.")
    do_sample: bool = Field(False, description="Sample instead of greedy or beam search.")
    temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    stop: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = Field(
        (), max_length=4, description="Stop before any of these strings (not included)."
    )
    seed: int | None = Field(None, description="Seed for sampling, for repeatable samples.")


EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR42mP8z0AaYGIY"
    "1TCqYdhqAABALgEfFO4+AgAAAABJRU5ErkJggg=="
)
"""A 16x16 red PNG, the example image of the API document."""


class ImageSource(_Body):
    """An image given by exactly one of an http(s) URL or base64 data (plain or a data URI)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": EXAMPLE_IMAGE}]})

    url: str | None = Field(None, max_length=8192, description="An http(s) URL to fetch.")
    data: str | None = Field(
        None, description="Base64-encoded image bytes, or a 'data:image/...;base64,' URI."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageSource:
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of 'url' or 'data'")
        return self

    @classmethod
    def from_bytes(cls, raw: bytes, media_type: str = "image/png") -> ImageSource:
        """Wrap raw image bytes as a data URI."""
        encoded = base64.b64encode(raw).decode("ascii")
        return cls(data=f"data:{media_type};base64,{encoded}")

    @classmethod
    def from_file(cls, path: str | Path) -> ImageSource:
        """Read an image file into a data URI."""
        file_path = Path(path)
        media_type = mimetypes.guess_type(file_path.name)[0] or "application/octet-stream"
        return cls.from_bytes(file_path.read_bytes(), media_type)


class VQAFields(_Body):
    """The fields of a VQA request besides the image (the form fields of an upload)."""

    question: str = Field(min_length=1, description="The question about the image.")
    params: GenerationParams = Field(default_factory=GenerationParams)


class VQARequest(VQAFields):
    """Ask a question about an image."""

    image: ImageSource


class CaptionFields(_Body):
    """The fields of a caption request besides the image (the form fields of an upload)."""

    prompt: str | None = Field(None, description="Optional caption prefix to continue.")
    params: GenerationParams = Field(default_factory=GenerationParams)


class CaptionRequest(CaptionFields):
    """Caption an image, optionally continuing a caller's prefix."""

    image: ImageSource


class GenerateFields(_Body):
    """The fields of a raw-prompt request besides the image (the form fields of an upload)."""

    prompt: str = Field(min_length=1, description="Sent to the model as given.")
    params: GenerationParams = Field(default_factory=GenerationParams)


class GenerateRequest(GenerateFields):
    """Continue a raw prompt about an image."""

    image: ImageSource


class Usage(_Body):
    """Token counts of one request (the image's query tokens are not counted)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class VQAResponse(_Body):
    """The answer to a question about an image."""

    answer: str
    model: str
    usage: Usage


class CaptionResponse(_Body):
    """A caption of an image (including the caller's prefix, if one was given)."""

    caption: str
    model: str
    usage: Usage


class GenerateResponse(_Body):
    """The continuation of a raw prompt."""

    text: str
    model: str
    usage: Usage


class ErrorDetail(_Body):
    """What went wrong, in a stable machine-readable code and a human message."""

    code: str
    message: str
    param: str | None = None


class ErrorResponse(_Body):
    """The body of every error response."""

    error: ErrorDetail


class ModelLimits(_Body):
    """Limits a caller must stay within."""

    default_max_new_tokens: int
    max_new_tokens_limit: int
    max_num_beams: int
    max_prompt_chars: int
    max_image_bytes: int
    max_image_pixels: int
    max_body_bytes: int


class ModelCard(_Body):
    """What a model replica has loaded."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the serving application started (Unix time).")
    owned_by: str = "blip2-serve"
    source: str = Field(description="The Hugging Face id, directory or builtin name loaded.")
    family: Literal["opt", "t5"]
    dtype: str
    device: str
    num_query_tokens: int
    vqa_prompt_template: str
    max_batch_size: int
    batch_wait_timeout_s: float
    merge_waiting_batches: bool
    limits: ModelLimits | None = None


class ModelList(_Body):
    """The models this service serves."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(_Body):
    """Liveness of the service."""

    status: Literal["ok"] = "ok"


class GenerationRequest(BaseModel):
    """A validated request as the model replica receives it: the image is already decoded.

    ``image`` is an RGB ``uint8`` array of shape (height, width, 3).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    task: Task
    text: str = ""
    image: np.ndarray[Any, np.dtype[np.uint8]]
    params: GenerationParams = Field(default_factory=GenerationParams)
    stream: bool = Field(False, description="Report text as it is generated.")


class GenerationResult(BaseModel):
    """The model's output for one request."""

    model_config = ConfigDict(frozen=True)

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"] = "stop"

    def usage(self) -> Usage:
        """Token counts in the response shape."""
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )
