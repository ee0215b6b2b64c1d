"""The gRPC API's messages: generated from the .proto, mapped to and from the typed models."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from serve_app.contract.api import GenerationParams, ModelCard, ModelLimits, ModelList, Usage
from serve_app.contract.errors import (
    AuthenticationError,
    BodyTimeoutError,
    GenerationFailedError,
    ImageFetchError,
    InvalidBase64Error,
    InvalidImageError,
    InvalidRequestError,
    MalformedBodyError,
    ModelNotFoundError,
    ModelOverloadedError,
    ModelUnavailableError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServeAppError,
    UnsupportedMediaTypeError,
)
from serve_app.grpc import messages
from serve_app.grpc.client import params_message, service_error
from serve_app.grpc.generated import blip2_pb2 as pb
from serve_app.grpc.status import status_of
from tests.support.images import image_bytes
from tests.support.serving import REPO_ROOT


def test_the_checked_in_modules_match_the_proto() -> None:
    generate = [sys.executable, str(REPO_ROOT / "proto" / "generate.py"), "--check"]
    checked = subprocess.run(generate, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def vqa(**fields: Any) -> pb.VqaRequest:
    request = pb.VqaRequest(question="How many?", image=pb.Image(data=image_bytes(0)))
    json_format.ParseDict(fields, request)
    return request


def test_a_request_becomes_the_typed_request_with_its_image_as_an_upload() -> None:
    request = messages.vqa_request(vqa(params={"max_new_tokens": 5, "stop": ["."]}))
    assert request.question == "How many?"
    assert request.image.upload is not None and request.image.upload.content == image_bytes(0)
    assert request.params == GenerationParams(max_new_tokens=5, stop=(".",))


def test_unset_settings_take_the_defaults_and_zero_is_a_value_not_unset() -> None:
    assert messages.vqa_request(vqa()).params == GenerationParams()
    with pytest.raises(InvalidRequestError) as refused:
        messages.vqa_request(vqa(params={"temperature": 0.0}))
    assert refused.value.param == "params.temperature"
    assert str(refused.value).startswith("params.temperature:")


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (pb.VqaRequest(question="q"), "image"),
        (pb.VqaRequest(question="q", image=pb.Image()), "image"),
        (pb.VqaRequest(question="", image=pb.Image(url="https://example.com/a.png")), "question"),
        (pb.VqaRequest(question="q", image=pb.Image(url="x" * 9000)), "image.url"),
        (
            pb.VqaRequest(question="q", image=pb.Image(url="https://a/b", media_type="image/png")),
            "image.media_type",
        ),
        (vqa(params={"num_beams": 0}), "params.num_beams"),
        (vqa(params={"stop": ["a", "b", "c", "d", "e"]}), "params.stop"),
    ],
)
def test_invalid_requests_name_the_field_at_fault(request_: pb.VqaRequest, param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        messages.vqa_request(request_)
    assert refused.value.param == param


def test_a_caption_prompt_is_optional_and_an_empty_one_is_kept() -> None:
    image = pb.Image(data=b"png")
    assert messages.caption_request(pb.CaptionRequest(image=image)).prompt is None
    assert messages.caption_request(pb.CaptionRequest(image=image, prompt="")).prompt == ""


def test_every_field_of_the_model_list_has_its_twin_in_the_message() -> None:
    limits = ModelLimits(
        default_max_new_tokens=20,
        max_new_tokens_limit=64,
        max_num_beams=4,
        max_prompt_chars=2000,
        max_image_bytes=10 << 20,
        max_image_pixels=40_000_000,
        max_body_bytes=16 << 20,
    )
    card = ModelCard(
        id="m",
        created=1,
        source="s",
        family="t5",
        dtype="float16",
        device="cuda:0",
        num_query_tokens=32,
        vqa_prompt_template="Question: {question} Answer:",
        max_batch_size=32,
        batch_wait_timeout_s=0.02,
        merge_waiting_batches=True,
        limits=limits,
    )
    listed = ModelList(data=[card])
    message = messages.to_message(listed, pb.ModelsResponse())
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert ModelList.model_validate(as_dict) == listed


def test_settings_go_out_as_set_and_come_back_alike() -> None:
    params = GenerationParams(max_new_tokens=7, temperature=0.5, do_sample=True, seed=3)
    request = pb.VqaRequest(question="q", image=pb.Image(data=b"x"), params=params_message(params))
    assert messages.generation_params(request) == params
    assert not params_message(None).ListFields()


ERRORS: list[tuple[ServeAppError, grpc.StatusCode]] = [
    (InvalidRequestError("question: field required", "question"), grpc.StatusCode.INVALID_ARGUMENT),
    (MalformedBodyError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidImageError("bad", "image"), grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidBase64Error("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (ImageFetchError("refused", "image.url"), grpc.StatusCode.INVALID_ARGUMENT),
    (PayloadTooLargeError("big", "image"), grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedMediaTypeError("text", "image"), grpc.StatusCode.INVALID_ARGUMENT),
    (BodyTimeoutError("slow"), grpc.StatusCode.INVALID_ARGUMENT),
    (AuthenticationError("no"), grpc.StatusCode.UNAUTHENTICATED),
    (ModelNotFoundError("no"), grpc.StatusCode.NOT_FOUND),
    (ModelOverloadedError("busy", retry_after_s=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelUnavailableError("none"), grpc.StatusCode.UNAVAILABLE),
    (RequestTimeoutError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (GenerationFailedError("failed"), grpc.StatusCode.INTERNAL),
]


class FakeRpcError(grpc.RpcError):
    """A failed call as a grpcio client raises it (a fake of the client library)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing


@pytest.mark.parametrize(("error", "code"), ERRORS, ids=[type(e).__name__ for e, _ in ERRORS])
def test_each_error_has_its_status_and_comes_back_typed_to_the_client(
    error: ServeAppError, code: grpc.StatusCode
) -> None:
    status = status_of(error)
    metadata = dict(status.trailing_metadata)
    assert (status.code, status.details, metadata["error-code"]) == (
        code,
        error.message,
        error.code,
    )
    assert metadata.get("error-param") == error.param
    assert ("retry-after-ms" in metadata) == (error.retry_after_s is not None)
    raised = service_error(FakeRpcError(status.code, status.details, status.trailing_metadata))
    assert type(raised) is type(error)
    assert isinstance(raised, ServeAppError)
    assert (raised.message, raised.param, raised.retry_after_s) == (
        error.message,
        error.param,
        error.retry_after_s,
    )


def test_a_failure_the_service_did_not_name_stays_a_grpc_error() -> None:
    failure = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect", None)
    assert service_error(failure) is failure


def test_usage_fills_its_message() -> None:
    usage = messages.to_message(
        Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5), pb.Usage()
    )
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 2, 5)


def test_messages_pickle_as_serves_proxy_sends_them_to_a_replica() -> None:
    request = vqa(params={"seed": 7})
    assert pickle.loads(pickle.dumps(request)) == request
