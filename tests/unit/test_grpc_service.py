"""The gRPC methods of the ingress, without Ray: a fake model backend and a fake call context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.contract.errors import ModelOverloadedError
from serve_app.grpc.generated import blip2_pb2 as pb
from serve_app.grpc.service import Blip2GrpcService
from serve_app.ingress.auth import BearerAuth
from serve_app.model.types import ModelRequest, ModelResult
from tests.support.fakes import FakeModelBackend, FakeModelStream
from tests.support.images import image_bytes

MODEL = ModelConfig(model_id="fake", default_max_new_tokens=8, max_new_tokens_limit=16)
TOKEN = "grpc-unit-token"


class FakeGrpcContext:
    """Serve's per-call gRPC context, as the service sees it (a fake of Serve's)."""

    def __init__(self, metadata: list[tuple[str, str | bytes]] | None = None) -> None:
        self.metadata = metadata or []
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: dict[str, str] = {}

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        return self.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None:
        self.trailing = dict(trailing_metadata)


def image() -> pb.Image:
    return pb.Image(data=image_bytes(0), media_type="image/png")


def service(model: Any = None, auth: BearerAuth | None = None, **limits: Any) -> Blip2GrpcService:
    return Blip2GrpcService(model or FakeModelBackend(), MODEL, LimitsConfig(**limits), auth=auth)


def test_a_question_is_answered_as_the_handlers_answer_it() -> None:
    model = FakeModelBackend()
    context = FakeGrpcContext()
    request = pb.VqaRequest(question="How many?", image=image())
    answer = asyncio.run(service(model).Vqa(request, context))
    assert (answer.answer, answer.model, answer.usage.total_tokens) == ("vqa:How many?", "fake", 5)
    assert context.code is None
    assert model.requests[0].image.shape == (16, 16, 3)


def test_caption_generate_and_models_answer() -> None:
    grpc_service = service()
    context = FakeGrpcContext()
    caption = asyncio.run(grpc_service.Caption(pb.CaptionRequest(image=image()), context))
    text = asyncio.run(
        grpc_service.Generate(pb.GenerateRequest(prompt="a", image=image()), context)
    )
    models = asyncio.run(grpc_service.Models(pb.ModelsRequest(), context))
    assert (caption.caption, text.text) == ("caption:", "prompt:a")
    assert models.data[0].id == "fake" and models.data[0].limits.max_new_tokens_limit == 16
    assert context.code is None


@pytest.mark.parametrize(
    ("request_", "code", "param"),
    [
        (pb.VqaRequest(question="q"), "invalid_request", "image"),
        (
            pb.VqaRequest(question="q", image=pb.Image(data=b"not an image")),
            "invalid_image",
            "image",
        ),
        (
            pb.VqaRequest(
                question="q", image=pb.Image(data=image_bytes(0), media_type="text/plain")
            ),
            "unsupported_media_type",
            "image",
        ),
        (
            pb.VqaRequest(
                question="q", image=image(), params=pb.GenerationParams(max_new_tokens=17)
            ),
            "invalid_request",
            "params.max_new_tokens",
        ),
        (pb.VqaRequest(question="q" * 2001, image=image()), "invalid_request", "question"),
    ],
)
def test_bad_requests_end_invalid_argument_with_their_code_and_never_reach_the_model(
    request_: pb.VqaRequest, code: str, param: str
) -> None:
    model = FakeModelBackend()
    context = FakeGrpcContext()
    response = asyncio.run(service(model).Vqa(request_, context))
    assert response == pb.VqaResponse()
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.trailing == {"error-code": code, "error-param": param}
    assert context.details and "Traceback" not in context.details
    assert not model.requests


def test_an_image_over_the_byte_limit_is_refused_before_decoding() -> None:
    model = FakeModelBackend()
    context = FakeGrpcContext()
    big = pb.Image(data=b"\x89PNG" + bytes(4096))
    asyncio.run(
        service(model, max_image_bytes=1024).Vqa(pb.VqaRequest(question="q", image=big), context)
    )
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.trailing["error-code"] == "payload_too_large"


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "Bearer wrong")],
        [("authorization", TOKEN)],
        [("x", f"Bearer {TOKEN}")],
    ],
)
def test_without_a_valid_bearer_token_a_call_is_unauthenticated(
    metadata: list[tuple[str, str | bytes]],
) -> None:
    model = FakeModelBackend()
    context = FakeGrpcContext(metadata)
    grpc_service = service(model, auth=BearerAuth([TOKEN]))
    asyncio.run(grpc_service.Vqa(pb.VqaRequest(question="q", image=image()), context))
    assert (context.code, context.trailing) == (
        grpc.StatusCode.UNAUTHENTICATED,
        {"error-code": "unauthorized"},
    )
    assert not model.requests


def test_with_a_valid_bearer_token_every_rpc_answers() -> None:
    context = FakeGrpcContext([("authorization", f"Bearer {TOKEN}")])
    grpc_service = service(auth=BearerAuth([TOKEN]))
    asyncio.run(grpc_service.Models(pb.ModelsRequest(), context))
    asyncio.run(grpc_service.Vqa(pb.VqaRequest(question="q", image=image()), context))
    assert context.code is None


class OverloadedModel(FakeModelBackend):
    """A fake model deployment whose queue is full."""

    async def generate(self, request: ModelRequest) -> ModelResult:
        raise ModelOverloadedError("the model is overloaded; retry shortly", retry_after_s=1.5)


class BrokenModel(FakeModelBackend):
    """A fake model deployment that fails with an error of no kind the service knows."""

    async def generate(self, request: ModelRequest) -> ModelResult:
        raise KeyError("secret internals at /opt/model")


def test_an_overloaded_model_is_resource_exhausted_with_a_retry_hint() -> None:
    context = FakeGrpcContext()
    asyncio.run(service(OverloadedModel()).Vqa(pb.VqaRequest(question="q", image=image()), context))
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert context.trailing == {"error-code": "overloaded", "retry-after-ms": "1500"}


def test_a_timeout_is_deadline_exceeded() -> None:
    context = FakeGrpcContext()
    slow = service(FakeModelBackend(seconds=1.0), request_timeout_s=0.05)
    asyncio.run(slow.Vqa(pb.VqaRequest(question="q", image=image()), context))
    assert (context.code, context.trailing["error-code"]) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "timeout",
    )


def test_an_unexpected_failure_is_internal_and_tells_nothing_of_it() -> None:
    context = FakeGrpcContext()
    asyncio.run(service(BrokenModel()).Vqa(pb.VqaRequest(question="q", image=image()), context))
    assert (context.code, context.details) == (grpc.StatusCode.INTERNAL, "internal server error")
    assert context.trailing == {"error-code": "internal_error"}


def collect(
    stream: Callable[[], AsyncIterator[pb.GenerateStreamResponse]],
) -> list[pb.GenerateStreamResponse]:
    async def run() -> list[pb.GenerateStreamResponse]:
        return [message async for message in stream()]

    return asyncio.run(run())


def test_a_stream_sends_deltas_that_join_to_the_text_then_the_end() -> None:
    context = FakeGrpcContext()
    request = pb.GenerateRequest(prompt="a", image=image())
    sent = collect(lambda: service().GenerateStream(request, context))
    assert "".join(m.delta for m in sent[:-1]) == "two words"
    assert [m.WhichOneof("event") for m in sent] == ["delta", "delta", "end"]
    end = sent[-1].end
    assert (end.finish_reason, end.model, end.usage.total_tokens, end.batch_size) == (
        "stop",
        "fake",
        5,
        1,
    )
    assert context.code is None


def test_a_stream_that_cannot_start_ends_in_error_with_the_status() -> None:
    context = FakeGrpcContext()
    request = pb.GenerateRequest(prompt="", image=image())
    sent = collect(lambda: service().GenerateStream(request, context))
    assert [m.end.finish_reason for m in sent] == ["error"]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.trailing == {"error-code": "invalid_request", "error-param": "prompt"}


class EndlessModel(FakeModelBackend):
    """A fake model deployment whose stream never ends on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.stream = FakeModelStream(["word "] * 1000)

    async def open_stream(self, request: ModelRequest) -> tuple[Any, str | ModelResult]:
        return self.stream, "first "


def test_a_stream_closed_by_its_caller_cancels_the_generation() -> None:
    model = EndlessModel()
    request = pb.GenerateRequest(prompt="a", image=image())

    async def read_two() -> None:
        stream = service(model).GenerateStream(request, FakeGrpcContext())
        assert (await anext(stream)).delta == "first "
        assert (await anext(stream)).delta == "word "
        await stream.aclose()  # what Serve does when the caller cancels

    asyncio.run(read_two())
    assert model.stream.cancelled


class FailingStreamModel(FakeModelBackend):
    """A fake model deployment whose stream fails after its first delta."""

    async def open_stream(self, request: ModelRequest) -> tuple[Any, str | ModelResult]:
        class Failing(FakeModelStream):
            async def __anext__(self) -> str | ModelResult:
                raise ModelOverloadedError("the model is overloaded; retry shortly")

        return Failing([]), "first "


def test_a_stream_that_fails_midway_ends_in_error_with_the_status() -> None:
    context = FakeGrpcContext()
    request = pb.GenerateRequest(prompt="a", image=image())
    sent = collect(lambda: service(FailingStreamModel()).GenerateStream(request, context))
    assert [m.WhichOneof("event") for m in sent] == ["delta", "end"]
    assert sent[-1].end.finish_reason == "error"
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
