"""An OpenAI chat conversation as one BLIP-2 request, and its result as OpenAI bodies.

BLIP-2 takes one image and a prompt. The conversation's one image is that image; earlier
user/assistant turns become context in BLIP-2's own format (the configured VQA template per
turn, each followed by its answer), and the last user message is the question. System and
developer messages are accepted and left out of the prompt: BLIP-2 has no system role and was
not trained to follow instructions. A conversation whose only user content is the image asks
for a caption.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from pydantic import ValidationError

from serve_app.config import ModelConfig
from serve_app.contract.api import GenerationParams, ImageSource
from serve_app.contract.errors import InvalidRequestError, ModelNotFoundError, invalid_request
from serve_app.contract.openai import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ImagePart,
)
from serve_app.model.types import ModelResult, Task


@dataclass(frozen=True)
class ImagePrompt:
    """What one request asks of BLIP-2: an image, a task, its text and generation settings."""

    image: ImageSource
    task: Task
    text: str
    params: GenerationParams


def chat_prompt(request: ChatCompletionRequest, model: ModelConfig) -> ImagePrompt:
    """Validate a chat request and build the BLIP-2 request it stands for."""
    if request.model != model.name:
        raise ModelNotFoundError(f"the model '{request.model}' does not exist", "model")
    _refuse_unsupported(request)
    images = [
        (index, part)
        for index, message in enumerate(request.messages)
        if isinstance(message.content, list)
        for part in message.content
        if isinstance(part, ImagePart)
    ]
    if len(images) != 1:
        found = "no image" if not images else f"{len(images)} images"
        raise InvalidRequestError(
            f"BLIP-2 takes exactly one image per conversation; got {found}", "messages"
        )
    image_index, image_part = images[0]
    if request.messages[image_index].role != "user":
        raise InvalidRequestError("only a user message may carry the image", "messages")
    image_url = image_part.image_url.url
    form = "data" if image_url.startswith("data:") else "url"
    try:
        image = ImageSource.model_validate({form: image_url})
    except ValidationError as exc:
        raise InvalidRequestError(
            f"image_url: {invalid_request(exc).message}", "messages"
        ) from None
    task, text = _prompt(request.messages, model.vqa_prompt_template)
    return ImagePrompt(image=image, task=task, text=text, params=_params(request))


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    unsupported = {
        "n": request.n > 1,
        "logprobs": bool(request.logprobs) or request.top_logprobs is not None,
        "tools": bool(request.tools),
        "response_format": (request.response_format or {}).get("type", "text") != "text",
        "frequency_penalty": bool(request.frequency_penalty),
        "presence_penalty": bool(request.presence_penalty),
    }
    for param, refused in unsupported.items():
        if refused:
            raise InvalidRequestError(f"{param} is not supported by this server", param)


def _text_of(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return (message.content or "").strip()
    return " ".join(
        part.text.strip() for part in message.content if not isinstance(part, ImagePart)
    ).strip()


def _prompt(messages: list[ChatMessage], template: str) -> tuple[Task, str]:
    """(task, text): a caption for an image alone, else a raw prompt with the turns as context."""
    dialogue = [m for m in messages if m.role in ("user", "assistant")]
    if not dialogue or dialogue[-1].role != "user":
        raise InvalidRequestError("the last message must be a user message", "messages")
    turns: list[str] = []
    question: list[str] = []
    for message in dialogue:
        text = _text_of(message)
        if message.role == "user":
            question.append(text)
            continue
        turns.append(f"{template.format(question=' '.join(question).strip())} {text}".strip())
        question = []
    last = " ".join(question).strip()
    if not last:
        if turns:
            raise InvalidRequestError("the last user message has no text", "messages")
        return "caption", ""
    return "prompt", " ".join([*turns, template.format(question=last)])


_OPENAI_NAMES = {"max_new_tokens": "max_tokens"}


def _params(request: ChatCompletionRequest) -> GenerationParams:
    stop = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    sampling = bool(request.temperature)
    settings = {
        "max_new_tokens": request.max_completion_tokens or request.max_tokens,
        "do_sample": sampling,
        "temperature": request.temperature if sampling and request.temperature else 1.0,
        "top_p": request.top_p if sampling and request.top_p else 1.0,
        "stop": tuple(stop),
        "seed": request.seed if sampling else None,
    }
    try:
        return GenerationParams.model_validate(settings)
    except ValidationError as exc:
        error = invalid_request(exc)
        field = (error.param or "").split(".")[0]
        param = _OPENAI_NAMES.get(field, field)
        raise InvalidRequestError(f"{param}: {exc.errors()[0]['msg']}", param) from None


@dataclass(frozen=True)
class Completion:
    """Identity shared by every chunk of one completion."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> Completion:
        """A fresh completion id and timestamp."""
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model)

    def whole(self, result: ModelResult) -> ChatCompletion:
        """The non-streamed response."""
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                Choice(
                    message=AssistantMessage(content=result.text),
                    finish_reason=result.finish_reason,
                )
            ],
            usage=result.usage(),
        )

    def chunk(
        self,
        delta: ChunkDelta | None = None,
        finish_reason: ModelResult | None = None,
        usage: ModelResult | None = None,
    ) -> ChatCompletionChunk:
        """One streamed chunk: a delta, the closing chunk, or the usage chunk."""
        choices = []
        if delta is not None or finish_reason is not None:
            reason = finish_reason.finish_reason if finish_reason is not None else None
            choices = [ChunkChoice(delta=delta or ChunkDelta(), finish_reason=reason)]
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage.usage() if usage is not None else None,
        )
