"""``Blip2Ingress``: HTTP routes and the typed Python handle API in front of ``Blip2Server``."""

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import FastAPI, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from serve_app import http_body
from serve_app.auth import BearerAuth
from serve_app.chat import Completion, openai_error, to_turn
from serve_app.chat_stream import chat_events
from serve_app.config import AuthConfig, LimitsConfig, ModelConfig
from serve_app.errors import (
    InvalidRequestError,
    ModelUnavailableError,
    RequestTimeoutError,
    ServeAppError,
)
from serve_app.http_errors import (
    ERROR_RESPONSES,
    OPENAI_ERROR_RESPONSES,
    install_error_handlers,
    json_error,
)
from serve_app.http_metrics import HttpMetricsMiddleware, count_error
from serve_app.images import ModelImageInput, decode_upload, fit_to_model_input, load_image
from serve_app.metrics import IngressMetrics
from serve_app.model_calls import call_with_retry
from serve_app.openai_schemas import ChatCompletion, ChatCompletionRequest
from serve_app.openapi_docs import install_openapi, json_body, request_body
from serve_app.schemas import (
    CaptionFields,
    CaptionRequest,
    CaptionResponse,
    GenerateFields,
    GenerateRequest,
    GenerateResponse,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    HealthResponse,
    ImageSource,
    ModelCard,
    ModelLimits,
    ModelList,
    Task,
    VQAFields,
    VQARequest,
    VQAResponse,
)

FieldsT = TypeVar("FieldsT", bound=BaseModel)
ResultT = TypeVar("ResultT")
Authorization = Annotated[
    HTTPAuthorizationCredentials | None,
    Security(HTTPBearer(auto_error=False, description="An API key, when the server sets any.")),
]
"""The caller's bearer token, if it sent one (routes decide; health routes take none)."""
ImageInput = ImageSource | http_body.Upload
"""An image as a caller gave it: a URL or base64 source, or an uploaded file."""

logger = logging.getLogger("ray.serve")

BODY_MEDIA_TYPES = ("application/json", "multipart/form-data")

app = FastAPI(
    title="BLIP-2 on Ray Serve",
    version="0.1.0",
    description="Visual question answering and image captioning with Salesforce BLIP-2.",
    # No redirects built from the caller's Host header: a trailing slash is simply a 404.
    redirect_slashes=False,
)
install_error_handlers(app)
app.add_middleware(HttpMetricsMiddleware)
install_openapi(app, [VQARequest, CaptionRequest, GenerateRequest, ChatCompletionRequest])


@serve.ingress(app)
class Blip2Ingress:
    """Validates requests, decodes images and forwards typed requests to the model.

    The same methods serve HTTP routes and Python callers holding the application's handle:
    ``handle.vqa.remote(VQARequest(...))`` returns a ``VQAResponse``.
    """

    def __init__(
        self,
        model: DeploymentHandle[Any],
        model_config: ModelConfig,
        limits: LimitsConfig,
        auth: AuthConfig,
    ) -> None:
        self._model = model
        self._model_config = model_config
        self._limits = limits
        self._auth = BearerAuth.from_config(auth)
        self._started = int(time.time())
        self._metrics = IngressMetrics()
        app.state.metrics = self._metrics
        self._image_input: ModelImageInput | None = None
        self._image_input_known = False

    async def vqa(self, request: VQARequest) -> VQAResponse:
        """Answer a question about an image."""
        return await self._vqa(request, request.image)

    async def caption(self, request: CaptionRequest) -> CaptionResponse:
        """Caption an image, optionally after a prefix."""
        return await self._caption(request, request.image)

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Continue a raw prompt about an image."""
        return await self._generate_text(request, request.image)

    async def chat_completions(self, request: ChatCompletionRequest) -> ChatCompletion:
        """An OpenAI chat completion (not streamed; stream over HTTP)."""
        if request.stream:
            raise InvalidRequestError("stream over the HTTP API", "stream")
        turn = to_turn(request, self._model_config)
        result = await self._run(turn.image, turn.task, turn.text, turn.params, "messages")
        return Completion.new(self._model_config.name).whole(result)

    async def models(self) -> ModelList:
        """Describe the served model, its limits and its live batching settings."""
        described: dict[str, Any] = await call_with_retry(self._model.describe.remote)
        described.pop("image_input", None)
        limits = ModelLimits(
            default_max_new_tokens=self._model_config.default_max_new_tokens,
            max_new_tokens_limit=self._model_config.max_new_tokens_limit,
            max_num_beams=self._model_config.max_num_beams,
            max_prompt_chars=self._limits.max_prompt_chars,
            max_image_bytes=self._limits.max_image_bytes,
            max_image_pixels=self._limits.max_image_pixels,
            max_body_bytes=self._limits.max_body_bytes,
        )
        card = ModelCard.model_validate(
            {
                **described,
                "id": self._model_config.name,
                "created": self._started,
                "vqa_prompt_template": self._model_config.vqa_prompt_template,
                "limits": limits,
            }
        )
        return ModelList(data=[card])

    @app.post(
        "/v1/vqa",
        response_model=VQAResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(VQARequest, VQAFields),
    )
    async def http_vqa(self, request: Request, authorization: Authorization) -> VQAResponse:
        """Answer a question about an image (JSON body or multipart upload)."""
        self._authorize(authorization)
        fields, image = await self._parse(request, VQARequest, VQAFields)
        return await self._vqa(fields, image)

    @app.post(
        "/v1/caption",
        response_model=CaptionResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(CaptionRequest, CaptionFields),
    )
    async def http_caption(self, request: Request, authorization: Authorization) -> CaptionResponse:
        """Caption an image (JSON body or multipart upload)."""
        self._authorize(authorization)
        fields, image = await self._parse(request, CaptionRequest, CaptionFields)
        return await self._caption(fields, image)

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(GenerateRequest, GenerateFields),
    )
    async def http_generate(
        self, request: Request, authorization: Authorization
    ) -> GenerateResponse:
        """Continue a raw prompt about an image (JSON body or multipart upload)."""
        self._authorize(authorization)
        fields, image = await self._parse(request, GenerateRequest, GenerateFields)
        return await self._generate_text(fields, image)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=OPENAI_ERROR_RESPONSES,
        openapi_extra=json_body(ChatCompletionRequest),
    )
    async def http_chat_completions(
        self, request: Request, authorization: Authorization
    ) -> Response:
        """OpenAI-compatible chat completions about one image; ``stream`` sends SSE chunks."""
        try:
            self._authorize(authorization)
            http_body.require_media_type(request, ("application/json",))
            body = await http_body.read_body(request, self._limits.max_body_bytes)
            chat = http_body.parse_json(body, ChatCompletionRequest)
            if chat.stream:
                return await self._chat_stream(chat)
            completion = await self.chat_completions(chat)
            return JSONResponse(completion.model_dump(mode="json"))
        except ServeAppError as error:
            count_error(request.scope, error.code)
            status, payload = openai_error(error)
            return json_error(status, payload.model_dump())

    @app.get("/v1/models", response_model=ModelList, responses={503: ERROR_RESPONSES[503]})
    async def http_models(self, authorization: Authorization) -> ModelList:
        """The served model, its family, dtype, limits and batching settings."""
        self._authorize(authorization)
        return await self._deadline(self.models())

    @app.get("/healthz", response_model=HealthResponse)
    async def http_health(self) -> HealthResponse:
        """Liveness of the ingress."""
        return HealthResponse()

    @app.get("/readyz", response_model=HealthResponse, responses={503: ERROR_RESPONSES[503]})
    async def http_ready(self) -> HealthResponse:
        """Readiness: a model replica answers."""
        try:
            async with asyncio.timeout(5):
                await call_with_retry(self._model.describe.remote)
        except TimeoutError:
            raise ModelUnavailableError("the model did not answer in time") from None
        return HealthResponse()

    async def _chat_stream(self, chat: ChatCompletionRequest) -> StreamingResponse:
        """Open the model's stream (errors before the first token are plain HTTP errors)."""
        turn = to_turn(chat, self._model_config)
        self._check_limits(turn.text, turn.params, "messages")
        deadline = asyncio.get_running_loop().time() + self._limits.request_timeout_s
        async with asyncio.timeout_at(deadline):
            pixels = await self._decode(turn.image)
            request = GenerationRequest(
                task=turn.task, text=turn.text, image=pixels, params=turn.params, stream=True
            )
            stream, first = await call_with_retry(lambda: self._open_stream(request))
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        events = chat_events(
            Completion.new(self._model_config.name), stream, first, deadline, include_usage
        )
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def _open_stream(self, request: GenerationRequest) -> tuple[Any, Any]:
        stream: Any = self._model.options(stream=True).generate_stream.remote(request)
        try:
            return stream, await anext(stream)
        except BaseException:
            stream.cancel()
            raise

    def _authorize(self, authorization: HTTPAuthorizationCredentials | None) -> None:
        if self._auth is not None:
            self._auth.check(None if authorization is None else authorization.credentials)

    async def _vqa(self, fields: VQAFields, image: ImageInput) -> VQAResponse:
        result = await self._run(image, "vqa", fields.question, fields.params, "question")
        return VQAResponse(answer=result.text, model=self._model_config.name, usage=result.usage())

    async def _caption(self, fields: CaptionFields, image: ImageInput) -> CaptionResponse:
        result = await self._run(image, "caption", fields.prompt or "", fields.params)
        return CaptionResponse(
            caption=result.text, model=self._model_config.name, usage=result.usage()
        )

    async def _generate_text(self, fields: GenerateFields, image: ImageInput) -> GenerateResponse:
        result = await self._run(image, "prompt", fields.prompt, fields.params)
        return GenerateResponse(
            text=result.text, model=self._model_config.name, usage=result.usage()
        )

    async def _parse(
        self, request: Request, json_model: type[FieldsT], fields_model: type[BaseModel]
    ) -> tuple[Any, ImageInput]:
        """The body's fields and its image (an ``ImageSource`` in JSON, or the uploaded file)."""
        kind = http_body.require_media_type(request, BODY_MEDIA_TYPES)
        body = await http_body.read_body(request, self._limits.max_body_bytes)
        if kind == "application/json":
            parsed: Any = http_body.parse_json(body, json_model)
            return parsed, parsed.image
        return await http_body.parse_multipart(request, body, fields_model)

    async def _run(
        self,
        image: ImageInput,
        task: Task,
        text: str,
        params: GenerationParams,
        text_param: str = "prompt",
    ) -> GenerationResult:
        """Check the caller's limits, then decode the image and generate within the deadline."""
        self._check_limits(text, params, text_param)

        async def run() -> GenerationResult:
            pixels = await self._decode(image)
            request = GenerationRequest(task=task, text=text, image=pixels, params=params)
            result: GenerationResult = await call_with_retry(
                lambda: self._model.generate.remote(request)
            )
            return result

        return await self._deadline(run())

    async def _decode(self, image: ImageInput) -> np.ndarray:
        started = time.perf_counter()
        if isinstance(image, ImageSource):
            pixels = await load_image(image, self._limits)
            size = len(image.data) * 3 // 4 if image.data is not None else None
        else:
            pixels = await asyncio.to_thread(
                decode_upload, image.content, image.content_type, self._limits
            )
            size = len(image.content)
        self._metrics.decode_time.observe(time.perf_counter() - started)
        if size is not None:
            self._metrics.image_bytes.observe(size)
        target = await self._model_image_input()
        if target is not None:
            pixels = await asyncio.to_thread(fit_to_model_input, pixels, target)
        return pixels

    async def _model_image_input(self) -> ModelImageInput | None:
        """The model's image input size, asked of a replica once; None: send images as decoded.

        Resizing here, exactly as the model's processor would, sends the model replica a small
        array instead of the full image and takes the resize off the replica's CPU.
        """
        if not self._image_input_known:
            described = await call_with_retry(self._model.describe.remote)
            self._image_input = ModelImageInput.from_description(described)
            self._image_input_known = True
        return self._image_input

    def _check_limits(self, text: str, params: GenerationParams, text_param: str) -> None:
        if len(text) > self._limits.max_prompt_chars:
            raise InvalidRequestError(
                f"{text_param} is longer than {self._limits.max_prompt_chars} characters",
                text_param,
            )
        cap = self._model_config.max_new_tokens_limit
        if params.max_new_tokens is not None and params.max_new_tokens > cap:
            raise InvalidRequestError(
                f"max_new_tokens must be at most {cap}", "params.max_new_tokens"
            )
        if params.num_beams > self._model_config.max_num_beams:
            raise InvalidRequestError(
                f"num_beams must be at most {self._model_config.max_num_beams}",
                "params.num_beams",
            )

    async def _deadline(self, work: Awaitable[ResultT]) -> ResultT:
        try:
            async with asyncio.timeout(self._limits.request_timeout_s):
                return await work
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request did not finish within {self._limits.request_timeout_s:g} s"
            ) from None
