"""``Blip2Handlers``: one typed handler per operation, shared by HTTP routes and handle calls.

A handler checks the caller's limits, decodes the image (here, never on the GPU replica),
calls the model deployment within the request's deadline and builds the typed response. No
HTTP and no Ray here: the model deployment is reached through a ``ModelBackend``.
"""

from __future__ import annotations

import time
from typing import Protocol, TypeVar

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.contract.api import (
    CaptionRequest,
    CaptionResponse,
    GenerateRequest,
    GenerateResponse,
    GenerationParams,
    HealthResponse,
    ModelCard,
    ModelLimits,
    ModelList,
    RetrievalModelCard,
    VQARequest,
    VQAResponse,
)
from serve_app.contract.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
)
from serve_app.contract.openai import ChatCompletion, ChatCompletionRequest
from serve_app.contract.retrieval import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    RankRequest,
    RankResponse,
)
from serve_app.ingress.admission import Admission
from serve_app.ingress.chat import Completion, ImagePrompt, chat_prompt
from serve_app.ingress.model_calls import ImageObserver, ModelCalls
from serve_app.ingress.model_client import ModelStream
from serve_app.ingress.retrieval import RetrievalHandlers
from serve_app.ingress.text_stream import ChatStream, TextStream
from serve_app.model.types import ModelImageInput, ModelRequest, ModelResult, ReplicaInfo

ResultT = TypeVar("ResultT")


class ModelBackend(Protocol):
    """The model deployment as handlers see it (``ModelClient``, or a fake in tests)."""

    async def generate(self, request: ModelRequest) -> ModelResult: ...

    async def open_stream(self, request: ModelRequest) -> tuple[ModelStream, str | ModelResult]: ...

    async def describe(self) -> ReplicaInfo: ...


class Blip2Handlers:
    """Validates typed requests, decodes their images and asks the model deployment."""

    def __init__(
        self,
        model: ModelBackend | None,
        config: ModelConfig,
        limits: LimitsConfig,
        observer: ImageObserver | None = None,
        retrieval: RetrievalHandlers | None = None,
    ) -> None:
        """Serve ``model`` (generation; None: not served) and ``retrieval`` (None: not served)."""
        self._model = model
        self._config = config
        self._limits = limits
        self._started = int(time.time())
        self._calls = (
            None
            if model is None
            else ModelCalls(model.describe, self._image_input, limits, observer)
        )
        self._retrieval = retrieval

    @property
    def limits(self) -> LimitsConfig:
        """The caps callers must stay within."""
        return self._limits

    @property
    def admission(self) -> Admission:
        """Load shedding of generation: the edges check it before reading a body.

        Raises:
            ModelNotFoundError: No generation model is served.
        """
        return self._generation()[1].admission

    @property
    def serves_generation(self) -> bool:
        """Whether a generation model is served."""
        return self._model is not None

    @property
    def serves_retrieval(self) -> bool:
        """Whether a retrieval model is served."""
        return self._retrieval is not None

    @property
    def retrieval(self) -> RetrievalHandlers:
        """The embeddings and rank handlers.

        Raises:
            ModelNotFoundError: No retrieval model is served.
        """
        if self._retrieval is None:
            raise ModelNotFoundError("this service serves no retrieval model", "model")
        return self._retrieval

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        """Embed texts and images into BLIP-2's shared space (see ``RetrievalHandlers``)."""
        return await self.retrieval.embeddings(request)

    async def rank(self, request: RankRequest) -> RankResponse:
        """Rank candidate texts for an image, or candidate images for a text."""
        return await self.retrieval.rank(request)

    async def vqa(self, request: VQARequest) -> VQAResponse:
        """Answer a question about an image."""
        prompt = ImagePrompt(request.image, "vqa", request.question, request.params)
        result = await self._run(prompt, "question")
        return VQAResponse(
            answer=result.text,
            model=self._config.name,
            usage=result.usage(),
            batch_size=result.batch_size,
        )

    async def caption(self, request: CaptionRequest) -> CaptionResponse:
        """Caption an image, optionally after a prefix."""
        prompt = ImagePrompt(request.image, "caption", request.prompt or "", request.params)
        result = await self._run(prompt)
        return CaptionResponse(
            caption=result.text,
            model=self._config.name,
            usage=result.usage(),
            batch_size=result.batch_size,
        )

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Continue a raw prompt about an image."""
        result = await self._run(
            ImagePrompt(request.image, "prompt", request.prompt, request.params)
        )
        return GenerateResponse(
            text=result.text,
            model=self._config.name,
            usage=result.usage(),
            batch_size=result.batch_size,
        )

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

    async def models(self, retrieval: bool = True) -> ModelList:
        """Describe the served models (the retrieval one unless ``retrieval`` is false), their
        limits and their live batching settings."""
        cards: list[ModelCard | RetrievalModelCard] = []
        if self._model is not None and self._calls is not None:
            info = await self._calls.within_deadline(self._calls.ask(self._model.describe()))
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
            cards.append(card)
        if retrieval and self._retrieval is not None:
            cards.append(await self._retrieval.card())
        return ModelList(data=cards)

    async def ready(self) -> HealthResponse:
        """Readiness: a replica of every served model answered recently (no model call)."""
        calls = [self._calls, self._retrieval.calls if self._retrieval else None]
        for served in calls:
            if served is not None and not await served.availability.available():
                raise ModelUnavailableError("no model replica has answered recently")
        return HealthResponse()

    def _generation(self) -> tuple[ModelBackend, ModelCalls]:
        if self._model is None or self._calls is None:
            raise ModelNotFoundError("this service serves no generation model", "model")
        return self._model, self._calls

    async def _open_stream(self, turn: ImagePrompt, text_param: str = "prompt") -> TextStream:
        """Check the caller's limits, decode the image and wait for the model's first event."""
        model, calls = self._generation()
        self._check_limits(turn.text, turn.params, text_param)
        deadline = calls.deadline()

        async def start() -> tuple[ModelStream, str | ModelResult]:
            # A stream is backlog until its first event: the wait it shares with the others.
            with calls.admission.admitted(self._work(turn.params)):
                model_request = await self._model_request(calls, turn, stream=True)
                return await calls.ask(model.open_stream(model_request))

        stream, first = await calls.within_deadline(start(), deadline)
        return TextStream(stream, first, deadline, self._limits.request_timeout_s)

    async def _run(self, prompt: ImagePrompt, text_param: str = "prompt") -> ModelResult:
        """Check the caller's limits, then decode the image and generate within the deadline."""
        model, calls = self._generation()
        self._check_limits(prompt.text, prompt.params, text_param)

        async def run() -> ModelResult:
            with calls.admission.admitted(self._work(prompt.params)):
                model_request = await self._model_request(calls, prompt)
                return await calls.ask(model.generate(model_request))

        return await calls.within_deadline(run())

    def _work(self, params: GenerationParams) -> float:
        """A request's share of the model's work: the tokens it may generate."""
        return float(params.max_new_tokens or self._config.default_max_new_tokens)

    @staticmethod
    async def _model_request(
        calls: ModelCalls, turn: ImagePrompt, stream: bool = False
    ) -> ModelRequest:
        pixels = await calls.decode(turn.image)
        return ModelRequest(
            task=turn.task, text=turn.text, image=pixels, params=turn.params, stream=stream
        )

    async def _image_input(self) -> ModelImageInput | None:
        model, _ = self._generation()
        return (await model.describe()).model.image_input

    def _check_limits(self, text: str, params: GenerationParams, text_param: str) -> None:
        if len(text) > self._limits.max_prompt_chars:
            raise InvalidRequestError(
                f"{text_param} is longer than {self._limits.max_prompt_chars} characters",
                text_param,
            )
        self._config.effective_params(params)
