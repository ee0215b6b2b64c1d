"""``Blip2Handlers``: one typed handler per operation, shared by HTTP routes and handle calls.

A handler checks the caller's limits, decodes the image (here, never on the GPU replica),
calls the model deployment within the request's deadline and builds the typed response. No
HTTP and no Ray here: the model deployment is reached through a ``ModelBackend``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.contract.api import (
    CaptionRequest,
    CaptionResponse,
    GenerateRequest,
    GenerateResponse,
    GenerationParams,
    HealthResponse,
    ImageSource,
    ModelCard,
    ModelLimits,
    ModelList,
    VQARequest,
    VQAResponse,
)
from serve_app.contract.errors import (
    GenerationFailedError,
    InvalidRequestError,
    ModelUnavailableError,
    RequestTimeoutError,
    ServeAppError,
)
from serve_app.contract.openai import ChatCompletion, ChatCompletionRequest
from serve_app.images.resize import fit_to_model_input
from serve_app.images.sources import load_image, off_loop
from serve_app.ingress.admission import Admission
from serve_app.ingress.availability import ModelAvailability
from serve_app.ingress.chat import Completion, ImagePrompt, chat_prompt
from serve_app.ingress.model_client import ModelStream, as_service_error
from serve_app.model.types import ModelImageInput, ModelRequest, ModelResult, ReplicaInfo

ResultT = TypeVar("ResultT")

READY_TIMEOUT_S = 5.0
"""How long the first readiness probe (and each background probe) waits for a replica."""


class ModelBackend(Protocol):
    """The model deployment as handlers see it (``ModelClient``, or a fake in tests)."""

    async def generate(self, request: ModelRequest) -> ModelResult: ...

    async def open_stream(self, request: ModelRequest) -> tuple[ModelStream, str | ModelResult]: ...

    async def describe(self) -> ReplicaInfo: ...


class ImageObserver(Protocol):
    """Told about every image decoded (metrics)."""

    def on_image(self, seconds: float, size: int | None) -> None: ...


@dataclass(frozen=True)
class TextStream:
    """A streamed generation that has started: its first event came from the model."""

    stream: ModelStream
    first: str | ModelResult
    deadline: float
    timeout_s: float

    async def events(self) -> AsyncGenerator[str | ModelResult, None]:
        """The text deltas as they come, then the result, within the request's deadline.

        Failures arrive as the service's typed errors. Closed early (its consumer went away),
        it cancels the model's work on the request.
        """
        finished = False
        item = self.first
        try:
            while isinstance(item, str):
                yield item
                async with asyncio.timeout_at(self.deadline):
                    item = await anext(self.stream)
            finished = True
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request did not finish within {self.timeout_s:g} s"
            ) from None
        except ServeAppError:
            raise
        except Exception as exc:
            error = as_service_error(exc)
            if isinstance(error, ServeAppError):
                raise error from exc
            raise GenerationFailedError("the model failed on this request") from exc
        finally:
            if not finished:
                self.stream.cancel()
        yield item


@dataclass(frozen=True)
class ChatStream:
    """A streamed chat completion that has started."""

    completion: Completion
    text: TextStream
    include_usage: bool


class Blip2Handlers:
    """Validates typed requests, decodes their images and asks the model deployment."""

    def __init__(
        self,
        model: ModelBackend,
        config: ModelConfig,
        limits: LimitsConfig,
        observer: ImageObserver | None = None,
    ) -> None:
        self._model = model
        self._config = config
        self._limits = limits
        self._observer = observer
        self._started = int(time.time())
        self._availability = ModelAvailability(model.describe, probe_timeout_s=READY_TIMEOUT_S)
        self._admission = Admission(limits.max_queue_wait_s)
        self._image_input: ModelImageInput | None = None
        self._image_input_known = False

    @property
    def limits(self) -> LimitsConfig:
        """The caps callers must stay within."""
        return self._limits

    @property
    def admission(self) -> Admission:
        """Load shedding: the HTTP edge checks it before reading a body."""
        return self._admission

    async def vqa(self, request: VQARequest) -> VQAResponse:
        """Answer a question about an image."""
        prompt = ImagePrompt(request.image, "vqa", request.question, request.params)
        result = await self._run(prompt, "question")
        return VQAResponse(answer=result.text, model=self._config.name, usage=result.usage())

    async def caption(self, request: CaptionRequest) -> CaptionResponse:
        """Caption an image, optionally after a prefix."""
        prompt = ImagePrompt(request.image, "caption", request.prompt or "", request.params)
        result = await self._run(prompt)
        return CaptionResponse(caption=result.text, model=self._config.name, usage=result.usage())

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Continue a raw prompt about an image."""
        result = await self._run(
            ImagePrompt(request.image, "prompt", request.prompt, request.params)
        )
        return GenerateResponse(text=result.text, model=self._config.name, usage=result.usage())

    async def chat_completions(self, request: ChatCompletionRequest) -> ChatCompletion:
        """An OpenAI chat completion, whole (streams are opened by :meth:`chat_stream`)."""
        if request.stream:
            raise InvalidRequestError("stream over the HTTP API", "stream")
        result = await self._run(chat_prompt(request, self._config), "messages")
        return Completion.new(self._config.name).whole(result)

    async def chat_stream(self, request: ChatCompletionRequest) -> ChatStream:
        """Start a streamed chat completion; errors before its first token are raised here."""
        text = await self._open_stream(chat_prompt(request, self._config), "messages")
        options = request.stream_options
        return ChatStream(
            completion=Completion.new(self._config.name),
            text=text,
            include_usage=bool(options and options.include_usage),
        )

    async def generate_stream(self, request: GenerateRequest) -> TextStream:
        """Start streaming the continuation of a raw prompt; errors before its first token are
        raised here."""
        return await self._open_stream(
            ImagePrompt(request.image, "prompt", request.prompt, request.params)
        )

    async def models(self) -> ModelList:
        """Describe the served model, its limits and its live batching settings."""
        info = await self._deadline(self._ask(self._model.describe()))
        limits = {**self._config.model_dump(), **self._limits.model_dump()}
        card = ModelCard(
            **info.model.model_dump(exclude={"image_input"}),
            **info.batching.model_dump(),
            id=self._config.name,
            created=self._started,
            vqa_prompt_template=self._config.vqa_prompt_template,
            limits=ModelLimits.model_validate(
                {name: limits[name] for name in ModelLimits.model_fields}
            ),
        )
        return ModelList(data=[card])

    async def ready(self) -> HealthResponse:
        """Readiness: a model replica answered recently (this costs no model call)."""
        if not await self._availability.available():
            raise ModelUnavailableError("no model replica has answered recently")
        return HealthResponse()

    async def _open_stream(self, turn: ImagePrompt, text_param: str = "prompt") -> TextStream:
        """Check the caller's limits, decode the image and wait for the model's first event."""
        self._check_limits(turn.text, turn.params, text_param)
        deadline = asyncio.get_running_loop().time() + self._limits.request_timeout_s

        async def start() -> tuple[ModelStream, str | ModelResult]:
            # A stream is backlog until its first event: the wait it shares with the others.
            with self._admission.admitted():
                model_request = await self._model_request(turn, stream=True)
                return await self._ask(self._model.open_stream(model_request))

        stream, first = await self._deadline(start(), deadline)
        return TextStream(stream, first, deadline, self._limits.request_timeout_s)

    async def _run(self, prompt: ImagePrompt, text_param: str = "prompt") -> ModelResult:
        """Check the caller's limits, then decode the image and generate within the deadline."""
        self._check_limits(prompt.text, prompt.params, text_param)

        async def run() -> ModelResult:
            with self._admission.admitted():
                model_request = await self._model_request(prompt)
                return await self._ask(self._model.generate(model_request))

        return await self._deadline(run())

    async def _model_request(self, turn: ImagePrompt, stream: bool = False) -> ModelRequest:
        pixels = await self._decode(turn.image)
        return ModelRequest(
            task=turn.task, text=turn.text, image=pixels, params=turn.params, stream=stream
        )

    async def _decode(self, image: ImageSource) -> np.ndarray:
        """The image's pixels, resized to the model's input in the same step once it is known
        (until then an image is checked before the model is asked its input size)."""
        known = self._image_input if self._image_input_known else None
        started = time.perf_counter()
        fetching = self._admission.set_aside()
        pixels = await load_image(image, self._limits, fetching=fetching, fit=known)
        if self._observer is not None:
            self._observer.on_image(time.perf_counter() - started, image.size_hint)
        if not self._image_input_known and (target := await self._model_image_input()):
            pixels = await off_loop(fit_to_model_input, pixels, target)
        return pixels

    async def _model_image_input(self) -> ModelImageInput | None:
        """The model's image input size, asked of a replica once; None: send images as decoded.

        Resizing here, exactly as the model's processor would, sends the model replica a small
        array instead of the full image and takes the resize off the replica's CPU.
        """
        if not self._image_input_known:
            self._image_input = (await self._ask(self._model.describe())).model.image_input
            self._image_input_known = True
        return self._image_input

    async def _ask(self, call: Awaitable[ResultT]) -> ResultT:
        """Make a model call, noting whether a replica answered (for readiness)."""
        try:
            result = await call
        except Exception as exc:
            self._availability.record(exc)
            raise
        self._availability.record(None)
        return result

    def _check_limits(self, text: str, params: GenerationParams, text_param: str) -> None:
        if len(text) > self._limits.max_prompt_chars:
            raise InvalidRequestError(
                f"{text_param} is longer than {self._limits.max_prompt_chars} characters",
                text_param,
            )
        self._config.effective_params(params)

    async def _deadline(self, work: Awaitable[ResultT], deadline: float | None = None) -> ResultT:
        """``work`` within the request's deadline (loop time; from now unless given)."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._limits.request_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                return await work
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request did not finish within {self._limits.request_timeout_s:g} s"
            ) from None
