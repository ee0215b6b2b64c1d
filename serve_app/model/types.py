"""The typed contract between the ingress and the model deployment (no Ray, no torch).

The ingress sends a ``ModelRequest`` (the image already decoded) and gets a ``ModelResult``;
it learns what a replica serves from its ``ReplicaInfo``. A model reports streamed text to, and
learns of cancelled requests from, a ``GenerationObserver``.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serve_app.config import BatchingConfig
from serve_app.contract.api import GenerationParams, Usage

Task = Literal["vqa", "caption", "prompt"]
"""What the model is asked to do: answer a question, caption (optionally after a prefix), or
continue a raw prompt."""

Family = Literal["opt", "t5"]
"""``"t5"`` for an encoder-decoder language model, ``"opt"`` for a decoder-only one."""


class ModelRequest(BaseModel):
    """A validated request as the model replica receives it: the image is already decoded.

    ``image`` is an RGB ``uint8`` array of shape (height, width, 3).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    task: Task
    text: str = ""
    image: np.ndarray[Any, np.dtype[np.uint8]]
    params: GenerationParams = Field(default_factory=GenerationParams)
    stream: bool = Field(False, description="Report text as it is generated.")
    request_id: str = Field("", description="The caller's request id, for the replica's logs.")


class ModelResult(BaseModel):
    """The model's output for one request."""

    model_config = ConfigDict(frozen=True)

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"] = "stop"
    batch_size: int = Field(
        1, ge=1, description="The most rows a decoding step of this request held."
    )

    def usage(self) -> Usage:
        """Token counts in the response shape."""
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


class GenerationObserver(Protocol):
    """Receives streamed text and says which requests are no longer wanted."""

    def on_text(self, index: int, delta: str) -> None:
        """New text for request ``index`` (its deltas add up to its final text)."""

    def is_cancelled(self, index: int) -> bool:
        """Whether request ``index``'s caller has gone away."""


class ModelImageInput(BaseModel):
    """The fixed size a model's image processor resizes every image to, and Pillow's filter.

    A model reports it only when resizing with Pillow, with that filter, gives exactly the
    pixels its own processor makes; the ingress then resizes before sending.
    """

    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    resample: int


class ModelInfo(BaseModel):
    """What a model has loaded."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(
        description="The Hugging Face id or builtin name loaded; a local directory's folder name."
    )
    family: Family
    dtype: str
    device: str
    num_query_tokens: int
    image_input: ModelImageInput | None = None


class ReplicaInfo(BaseModel):
    """What a model replica serves: its model and its live batching settings."""

    model_config = ConfigDict(frozen=True)

    model: ModelInfo
    batching: BatchingConfig
