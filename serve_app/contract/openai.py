"""The OpenAI chat-completions protocol, as far as BLIP-2 can honour it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.contract.api import Usage
from serve_app.contract.base import StrictModel


class TextPart(StrictModel):
    """A text part of a message's content."""

    type: Literal["text"]
    text: str


class ImageURL(StrictModel):
    """An http(s) URL or a ``data:image/...;base64,`` URI."""

    url: str = Field(max_length=20_000_000)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(StrictModel):
    """An image part of a message's content."""

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(StrictModel):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(StrictModel):
    """Options of a streamed response."""

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. Fields of the OpenAI API that are not listed are ignored;
    listed ones that BLIP-2 cannot honour are refused with a 400."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class AssistantMessage(StrictModel):
    """The generated reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(StrictModel):
    """One completion (this server makes exactly one)."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionIdentity(StrictModel):
    """What every body of one completion shares, whole or streamed."""

    id: str
    created: int
    model: str


class ChatCompletion(CompletionIdentity):
    """A whole chat completion."""

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage


class ChunkDelta(StrictModel):
    """What a streamed chunk adds to the reply."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(StrictModel):
    """The part of a streamed chunk for the one completion."""

    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(CompletionIdentity):
    """One Server-Sent Event of a streamed completion."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None


class OpenAIError(StrictModel):
    """An error in the OpenAI shape."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(StrictModel):
    """The body of an error on the OpenAI-compatible routes."""

    error: OpenAIError
