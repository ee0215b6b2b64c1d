"""``Blip2Ingress``: HTTP routes and the typed Python handle API in front of ``Blip2Server``."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import FastAPI, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from serve_app import http_body
from serve_app.auth import BearerAuth
from serve_app.config import AuthConfig, LimitsConfig, ModelConfig
from serve_app.errors import (
    GenerationFailedError,
    InvalidRequestError,
    ModelOverloadedError,
    ModelUnavailableError,
    RequestTimeoutError,
    ServeAppError,
)
from serve_app.http_errors import ERROR_RESPONSES, install_error_handlers
from serve_app.images import decode_upload, load_image
from serve_app.openapi_docs import install_openapi, request_body
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
install_openapi(app, [VQARequest, CaptionRequest, GenerateRequest])


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

    async def vqa(self, request: VQARequest) -> VQAResponse:
        """Answer a question about an image."""
        return await self._vqa(request, request.image)

    async def caption(self, request: CaptionRequest) -> CaptionResponse:
        """Caption an image, optionally after a prefix."""
        return await self._caption(request, request.image)

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Continue a raw prompt about an image."""
        return await self._generate_text(request, request.image)

    async def models(self) -> ModelList:
        """Describe the served model, its limits and its live batching settings."""
        described: dict[str, Any] = await self._call_model(self._model.describe.remote)
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
                await self._call_model(self._model.describe.remote)
        except TimeoutError:
            raise ModelUnavailableError("the model did not answer in time") from None
        return HealthResponse()

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
            result: GenerationResult = await self._call_model(
                lambda: self._model.generate.remote(request)
            )
            return result

        return await self._deadline(run())

    async def _decode(self, image: ImageInput) -> np.ndarray:
        if isinstance(image, ImageSource):
            return await load_image(image, self._limits)
        return await asyncio.to_thread(
            decode_upload, image.content, image.content_type, self._limits
        )

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

    async def _call_model(self, send: Callable[[], Any]) -> Any:
        """Make a model call; if its replica dies mid-request, make it once more elsewhere.

        Generation is idempotent, so a retry is safe. When the caller goes away or its deadline
        passes, Serve cancels the call downstream, so queued work is dropped.
        """
        for attempt in (1, 2):
            try:
                return await send()
            except (ReplicaUnavailableError, RayActorError):
                if attempt == 1:
                    logger.warning("A model replica died mid-request; retrying it once")
                    continue
                raise ModelUnavailableError(
                    "no model replica is available; retry shortly"
                ) from None
            except BackPressureError:
                raise ModelOverloadedError("the model is overloaded; retry shortly") from None
            except DeploymentUnavailableError:
                raise ModelUnavailableError(
                    "no model replica is available; retry shortly"
                ) from None
            except RayTaskError as exc:
                if isinstance(exc.cause, ServeAppError):
                    raise exc.cause from None
                raise GenerationFailedError("the model failed on this request") from None
        raise AssertionError("unreachable")
