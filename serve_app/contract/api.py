"""The native API's request, response and error models, shared by HTTP and handle callers."""

from __future__ import annotations

import base64
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from serve_app.contract.base import StrictModel


class GenerationParams(StrictModel):
    """Generation settings a caller may set; each is capped by the server's configuration."""

    model_config = ConfigDict(frozen=True)

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
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = Field(
        None, description="Seed for sampling: the same seeded request gives the same text."
    )


EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR42mP8z0AaYGIY"
    "1TCqYdhqAABALgEfFO4+AgAAAABJRU5ErkJggg=="
)
"""A 16x16 red PNG, the example image of the API document."""


@dataclass(frozen=True)
class UploadedImage:
    """An image's raw bytes, with the media type its sender declared (if any)."""

    content: bytes
    content_type: str | None


class ImageSource(StrictModel):
    """An image given by exactly one of an http(s) URL or base64 data (plain or a data URI).

    In Python an image can also be given as raw bytes (:meth:`from_upload`), as multipart
    uploads are: they reach the ingress as bytes, with no base64 step.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": EXAMPLE_IMAGE}]})

    url: str | None = Field(None, max_length=8192, description="An http(s) URL to fetch.")
    data: str | None = Field(
        None, description="Base64-encoded image bytes, or a 'data:image/...;base64,' URI."
    )
    _upload: UploadedImage | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageSource:
        if self._upload is None and (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of 'url' or 'data'")
        return self

    @property
    def upload(self) -> UploadedImage | None:
        """The raw bytes, for an image given by :meth:`from_upload`."""
        return self._upload

    @classmethod
    def from_upload(cls, content: bytes, content_type: str | None = None) -> ImageSource:
        """Raw image bytes, kept as bytes (not part of the JSON form of the model)."""
        source = cls.model_construct()
        source._upload = UploadedImage(content, content_type)
        return source

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

    @property
    def size_hint(self) -> int | None:
        """The image's size in bytes, where it is known before fetching (not for URLs)."""
        if self._upload is not None:
            return len(self._upload.content)
        return len(self.data) * 3 // 4 if self.data is not None else None


class VQARequest(StrictModel):
    """Ask a question about an image."""

    question: str = Field(min_length=1, description="The question about the image.")
    params: GenerationParams = Field(default_factory=GenerationParams)
    image: ImageSource


class CaptionRequest(StrictModel):
    """Caption an image, optionally continuing a caller's prefix."""

    prompt: str | None = Field(None, description="Optional caption prefix to continue.")
    params: GenerationParams = Field(default_factory=GenerationParams)
    image: ImageSource


class GenerateRequest(StrictModel):
    """Continue a raw prompt about an image."""

    prompt: str = Field(min_length=1, description="Sent to the model as given.")
    params: GenerationParams = Field(default_factory=GenerationParams)
    image: ImageSource


class Usage(StrictModel):
    """Token counts of one request (the image's query tokens are not counted)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


BATCH_SIZE = (
    "The most requests the model's decoding loop ran together in one step of this one, this one "
    "included."
)


class VQAResponse(StrictModel):
    """The answer to a question about an image."""

    answer: str
    model: str
    usage: Usage
    batch_size: int = Field(ge=1, description=BATCH_SIZE)


class CaptionResponse(StrictModel):
    """A caption of an image (including the caller's prefix, if one was given)."""

    caption: str
    model: str
    usage: Usage
    batch_size: int = Field(ge=1, description=BATCH_SIZE)


class GenerateResponse(StrictModel):
    """The continuation of a raw prompt."""

    text: str
    model: str
    usage: Usage
    batch_size: int = Field(ge=1, description=BATCH_SIZE)


class ErrorDetail(StrictModel):
    """What went wrong, in a stable machine-readable code and a human message."""

    code: str
    message: str
    param: str | None = None


class ErrorResponse(StrictModel):
    """The body of every error response."""

    error: ErrorDetail


class ModelLimits(StrictModel):
    """Limits a caller must stay within."""

    default_max_new_tokens: int
    max_new_tokens_limit: int
    max_num_beams: int
    max_prompt_chars: int
    max_image_bytes: int
    max_image_pixels: int
    max_body_bytes: int


class ModelCard(StrictModel):
    """What a model replica has loaded."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the serving application started (Unix time).")
    owned_by: str = "blip2-serve"
    source: str = Field(
        description="The Hugging Face id or builtin name loaded; a local directory's folder name."
    )
    family: Literal["opt", "t5"]
    dtype: str
    device: str
    num_query_tokens: int
    vqa_prompt_template: str
    max_batch_size: int
    batch_wait_timeout_s: float
    merge_waiting_batches: bool
    max_rows: int | None = Field(
        None, description="Requests the replica's decoding loop generates for at once."
    )
    max_prefills_per_step: int | None = Field(
        None, description="Requests the decoding loop admits in one step (null: as rows free)."
    )
    limits: ModelLimits | None = None


class RetrievalModelCard(StrictModel):
    """What a retrieval replica has loaded (served by ``/v1/embeddings`` and ``/v1/rank``)."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the serving application started (Unix time).")
    owned_by: str = "blip2-serve"
    task: Literal["retrieval"] = "retrieval"
    source: str
    dtype: str
    device: str
    num_query_tokens: int
    dimensions: int = Field(description="Length of every embedding vector.")
    max_text_tokens: int
    max_inputs: int
    max_candidates: int
    max_batch_size: int
    batch_wait_timeout_s: float
    merge_waiting_batches: bool


class ModelList(StrictModel):
    """The models this service serves: the generation model, then the retrieval model."""

    object: Literal["list"] = "list"
    data: list[ModelCard | RetrievalModelCard]


class HealthResponse(StrictModel):
    """Liveness of the service."""

    status: Literal["ok"] = "ok"
