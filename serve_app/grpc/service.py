"""``Blip2GrpcService``: the RPCs of ``blip2.v1.Blip2Service``, answered by ``Blip2Handlers``.

Serve's gRPC proxy calls the ingress method named after each RPC with the request message and
a ``grpc_context``. Both edges share the handlers, so a call is validated, limited, admitted
and refused exactly as its HTTP twin. A failed call sets its status, details and trailing
metadata on the context and returns an empty message (a stream: an ``end`` message whose
finish reason is "error"); the proxy then ends the call with that status. Raising instead
would lose the trailing metadata.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from pydantic import BaseModel

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.contract.errors import ServeAppError
from serve_app.grpc import messages
from serve_app.grpc.generated import blip2_pb2 as pb
from serve_app.grpc.status import ERROR_CODE_KEY, CallStatus, status_of
from serve_app.ingress.auth import BearerAuth, bearer_token
from serve_app.ingress.handlers import Blip2Handlers, ModelBackend
from serve_app.ingress.model_calls import ImageObserver
from serve_app.ingress.retrieval import RetrievalHandlers
from serve_app.metrics import GrpcMetrics

logger = logging.getLogger("ray.serve")

MessageT = TypeVar("MessageT", bound=Message)

INTERNAL = CallStatus(
    grpc.StatusCode.INTERNAL, "internal server error", ((ERROR_CODE_KEY, "internal_error"),)
)


class GrpcContext(Protocol):
    """What the service uses of Serve's ``RayServegRPCContext``."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]: ...

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None: ...


class Blip2GrpcService(Blip2Handlers):
    """``Blip2Handlers`` that also answer ``blip2.v1.Blip2Service`` (methods named as RPCs)."""

    def __init__(
        self,
        model: ModelBackend | None,
        config: ModelConfig,
        limits: LimitsConfig,
        observer: ImageObserver | None = None,
        auth: BearerAuth | None = None,
        grpc_metrics: GrpcMetrics | None = None,
        retrieval: RetrievalHandlers | None = None,
    ) -> None:
        super().__init__(model, config, limits, observer, retrieval)
        self.auth = auth
        self._grpc_metrics = grpc_metrics

    async def Vqa(self, request: pb.VqaRequest, grpc_context: GrpcContext) -> pb.VqaResponse:
        """Answer a question about an image."""
        return await self._unary(
            "Vqa", grpc_context, pb.VqaResponse(), lambda: self.vqa(messages.vqa_request(request))
        )

    async def Caption(
        self, request: pb.CaptionRequest, grpc_context: GrpcContext
    ) -> pb.CaptionResponse:
        """Caption an image, optionally continuing a prefix."""
        return await self._unary(
            "Caption",
            grpc_context,
            pb.CaptionResponse(),
            lambda: self.caption(messages.caption_request(request)),
        )

    async def Generate(
        self, request: pb.GenerateRequest, grpc_context: GrpcContext
    ) -> pb.GenerateResponse:
        """Continue a raw prompt about an image."""
        return await self._unary(
            "Generate",
            grpc_context,
            pb.GenerateResponse(),
            lambda: self.generate(messages.generate_request(request)),
        )

    async def GenerateStream(
        self, request: pb.GenerateRequest, grpc_context: GrpcContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        """Continue a raw prompt about an image, sending text deltas, then the end.

        A caller who cancels closes this generator, which cancels the model's work.
        """
        model = self._config.name
        try:
            self._authorize(grpc_context)
            self.admission.check()
            started = await self.generate_stream(messages.generate_request(request))
            async with aclosing(started.events()) as events:
                async for item in events:
                    if isinstance(item, str):
                        yield pb.GenerateStreamResponse(delta=item)
                        continue
                    usage = messages.to_message(item.usage(), pb.Usage())
                    end = pb.StreamEnd(
                        finish_reason=item.finish_reason,
                        usage=usage,
                        model=model,
                        batch_size=item.batch_size,
                    )
                    yield pb.GenerateStreamResponse(end=end)
        except Exception as exc:
            self._fail("GenerateStream", grpc_context, exc)
            yield pb.GenerateStreamResponse(end=pb.StreamEnd(finish_reason="error", model=model))

    async def Models(
        self, request: pb.ModelsRequest, grpc_context: GrpcContext
    ) -> pb.ModelsResponse:
        """The served generation model, its limits and its batching settings."""
        return await self._unary(
            "Models", grpc_context, pb.ModelsResponse(), lambda: self.models(retrieval=False)
        )

    async def _unary(
        self,
        method: str,
        context: GrpcContext,
        empty: MessageT,
        call: Callable[[], Awaitable[BaseModel]],
    ) -> MessageT:
        """Authorize, shed load, make the call and fill the response (or fail the call)."""
        try:
            self._authorize(context)
            self.admission.check()
            response = await call()
        except Exception as exc:
            self._fail(method, context, exc)
            return empty
        return messages.to_message(response, empty)

    def _authorize(self, context: GrpcContext) -> None:
        if self.auth is None:
            return
        values = [value for key, value in context.invocation_metadata() if key == "authorization"]
        header = values[0] if values and isinstance(values[0], str) else None
        self.auth.authorize(bearer_token(header))

    def _fail(self, method: str, context: GrpcContext, exc: Exception) -> None:
        """End the call with the status of ``exc`` (an unexpected error: INTERNAL, no detail)."""
        if isinstance(exc, ServeAppError):
            status = status_of(exc)
            if exc.logged:
                logger.warning("gRPC %s failed: %s (%s)", method, exc.code, exc.message)
        else:
            logger.error("Unexpected error in gRPC %s", method, exc_info=exc)
            status = INTERNAL
        context.set_code(status.code)
        context.set_details(status.details)
        context.set_trailing_metadata(list(status.trailing_metadata))
        if self._grpc_metrics is not None:
            self._grpc_metrics.count_error(method, dict(status.trailing_metadata)[ERROR_CODE_KEY])
