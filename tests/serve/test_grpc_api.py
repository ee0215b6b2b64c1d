"""The gRPC API through Serve's gRPC proxy, driven by a real grpcio client.

The model is the real tiny BLIP-2 with a fake pace (each streamed step waits a little), so a
stream visibly arrives over time and can be cancelled midway. Answers are checked against the
HTTP API of the same application: both edges share one path.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import json_format
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from ray import serve

from serve_app.app import build_application
from serve_app.config import TINY_RANDOM_OPT, AppConfig
from serve_app.contract.api import GenerationParams, ModelList
from serve_app.contract.errors import AuthenticationError, InvalidImageError
from serve_app.grpc.client import Blip2GrpcClient
from serve_app.grpc.generated import blip2_pb2 as pb
from serve_app.grpc.generated.blip2_pb2_grpc import Blip2ServiceStub
from tests.serve.conftest import GRPC_MAX_MESSAGE_BYTES
from tests.support.fakes import paced_blip2, slow_fake_model
from tests.support.http_server import StaticServer, static_server
from tests.support.images import image_bytes
from tests.support.serving import run_app

STEP_SECONDS = 0.05
TOKEN = "grpc-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MAX_IMAGE_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def images() -> Iterator[StaticServer]:
    with static_server({"/3.png": ("image/png", image_bytes(3))}) as server:
        yield server


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("record") / "results.jsonl"


@pytest.fixture(scope="module")
def url(serve_url: str, record: Path) -> str:
    run_app(
        paced_blip2(STEP_SECONDS, record),
        {
            "model": {"model_id": TINY_RANDOM_OPT, "default_max_new_tokens": 12},
            "limits": {"allow_private_urls": True, "max_image_bytes": MAX_IMAGE_BYTES},
            "auth": {"api_keys": [TOKEN]},
        },
        batching={"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
    )
    return serve_url


@pytest.fixture(scope="module")
def stub(url: str, grpc_target: str) -> Iterator[Blip2ServiceStub]:
    with grpc.insecure_channel(grpc_target) as channel:
        yield Blip2ServiceStub(channel)


@pytest.fixture(scope="module")
def client(url: str, grpc_target: str) -> Iterator[Blip2GrpcClient]:
    with Blip2GrpcClient(grpc_target, token=TOKEN, timeout_s=60) as grpc_client:
        yield grpc_client


def http(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = requests.post(f"{url}{path}", json=body, headers=headers, timeout=60)
    assert response.ok, response.text
    answer: dict[str, Any] = response.json()
    return answer


def data_uri(index: int) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(index)).decode()


def image(index: int) -> pb.Image:
    return pb.Image(data=image_bytes(index), media_type="image/png")


def usage(message: pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "total_tokens": message.total_tokens,
    }


def test_every_rpc_answers_as_the_http_api_does(url: str, stub: Blip2ServiceStub) -> None:
    params = pb.GenerationParams(max_new_tokens=6)
    vqa = stub.Vqa(pb.VqaRequest(question="Which?", image=image(1), params=params), metadata=AUTH)
    caption = stub.Caption(pb.CaptionRequest(image=image(2), prompt="a"), metadata=AUTH)
    text = stub.Generate(pb.GenerateRequest(prompt="Look:", image=image(4)), metadata=AUTH)
    http_vqa = http(
        url,
        "/v1/vqa",
        {"question": "Which?", "image": {"data": data_uri(1)}, "params": {"max_new_tokens": 6}},
    )
    http_caption = http(url, "/v1/caption", {"prompt": "a", "image": {"data": data_uri(2)}})
    http_text = http(url, "/v1/generate", {"prompt": "Look:", "image": {"data": data_uri(4)}})
    assert (vqa.answer, usage(vqa.usage)) == (http_vqa["answer"], http_vqa["usage"])
    assert (caption.caption, usage(caption.usage)) == (
        http_caption["caption"],
        http_caption["usage"],
    )
    assert (text.text, usage(text.usage)) == (http_text["text"], http_text["usage"])
    # One call at a time: each ran in a batch of its own.
    sizes = [vqa.batch_size, caption.batch_size, text.batch_size, http_vqa["batch_size"]]
    assert sizes == [1, 1, 1, 1]
    assert vqa.model == caption.model == text.model == TINY_RANDOM_OPT
    assert vqa.usage.completion_tokens <= 6 and text.usage.completion_tokens > 0


def test_models_lists_what_the_http_api_lists(url: str, stub: Blip2ServiceStub) -> None:
    listed = stub.Models(pb.ModelsRequest(), metadata=AUTH)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    http_listed = requests.get(f"{url}/v1/models", headers=headers, timeout=30).json()
    as_dict = json_format.MessageToDict(listed, preserving_proto_field_name=True)
    # (JSON gives 64-bit integers as strings; the model reads them back as numbers.)
    assert ModelList.model_validate(as_dict) == ModelList.model_validate(http_listed)
    assert listed.data[0].limits.max_image_bytes == MAX_IMAGE_BYTES


def test_every_image_form_gives_the_same_answer(
    url: str, images: StaticServer, client: Blip2GrpcClient, tmp_path: Path
) -> None:
    path = tmp_path / "3.png"
    path.write_bytes(image_bytes(3))
    forms = [
        image_bytes(3),  # bytes with no media type
        pb.Image(data=image_bytes(3), media_type="image/png"),
        path,
        f"{images.base_url}/3.png",
    ]
    answers = {client.vqa(form, "What is it?").answer for form in forms}
    expected = http(url, "/v1/vqa", {"question": "What is it?", "image": {"data": data_uri(3)}})
    assert answers == {expected["answer"]}
    assert images.hits["/3.png"] == 1


def test_streamed_deltas_arrive_over_time_and_join_to_the_unary_answer(
    client: Blip2GrpcClient,
) -> None:
    params = GenerationParams(max_new_tokens=10)
    whole = client.generate(image_bytes(5), "Tell me:", params)
    arrivals = [
        (time.monotonic(), message)
        for message in client.generate_stream(image_bytes(5), "Tell me:", params)
    ]
    messages = [message for _, message in arrivals]
    deltas = [message.delta for message in messages[:-1]]
    assert all(message.WhichOneof("event") == "delta" for message in messages[:-1])
    assert len(deltas) > 2 and "".join(deltas) == whole.text
    end = messages[-1].end
    assert (end.finish_reason, usage(end.usage), end.model, end.batch_size) == (
        "length" if whole.usage.completion_tokens == 10 else "stop",
        usage(whole.usage),
        TINY_RANDOM_OPT,
        1,
    )
    times = [moment for moment, _ in arrivals[:-1]]
    assert times[-1] - times[0] > STEP_SECONDS * (len(times) - 2)


def test_a_client_that_cancels_a_stream_stops_its_generation(
    stub: Blip2ServiceStub, record: Path
) -> None:
    request = pb.GenerateRequest(
        prompt="Please keep talking",
        image=image(6),
        params=pb.GenerationParams(max_new_tokens=60),
    )
    stream = stub.GenerateStream(request, metadata=AUTH)
    assert next(stream).WhichOneof("event") == "delta"
    stream.cancel()
    deadline = time.monotonic() + 20
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not mine:
        done = [json.loads(line) for line in record.read_text().splitlines()]
        mine = [r for r in done if r["text"] == "Please keep talking"]
        time.sleep(0.2)
    assert mine and mine[0]["completion_tokens"] < 30, mine


def error_of(call: Any) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    error: Any = failed.value
    return error.code(), error.details(), dict(error.trailing_metadata() or ())


BAD_REQUESTS: dict[str, tuple[pb.VqaRequest, str, str]] = {
    "not an image": (
        pb.VqaRequest(question="q", image=pb.Image(data=b"GIF89a broken")),
        "invalid_image",
        "image",
    ),
    "no image": (pb.VqaRequest(question="q"), "invalid_request", "image"),
    "no question": (pb.VqaRequest(image=image(0)), "invalid_request", "question"),
    "settings over the caps": (
        pb.VqaRequest(question="q", image=image(0), params=pb.GenerationParams(num_beams=64)),
        "invalid_request",
        "params.num_beams",
    ),
    "a text file": (
        pb.VqaRequest(question="q", image=pb.Image(data=b"hello", media_type="text/plain")),
        "unsupported_media_type",
        "image",
    ),
    "image bytes over the limit": (
        pb.VqaRequest(question="q", image=pb.Image(data=bytes(MAX_IMAGE_BYTES + 1))),
        "payload_too_large",
        "image",
    ),
    "a URL that is not http": (
        pb.VqaRequest(question="q", image=pb.Image(url="file:///etc/passwd")),
        "image_fetch_failed",
        "image.url",
    ),
}


@pytest.mark.parametrize(("request_", "code", "param"), BAD_REQUESTS.values(), ids=BAD_REQUESTS)
def test_bad_requests_end_invalid_argument_with_their_error_code(
    stub: Blip2ServiceStub, request_: pb.VqaRequest, code: str, param: str
) -> None:
    status, details, trailing = error_of(lambda: stub.Vqa(request_, metadata=AUTH))
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert (trailing["error-code"], trailing["error-param"]) == (code, param)
    assert details and "Traceback" not in details and "File " not in details


def test_a_message_over_the_proxys_cap_is_refused_by_grpc_before_the_ingress(
    stub: Blip2ServiceStub,
) -> None:
    huge = pb.VqaRequest(question="q", image=pb.Image(data=bytes(GRPC_MAX_MESSAGE_BYTES + 1)))
    status, _, trailing = error_of(lambda: stub.Vqa(huge, metadata=AUTH))
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED and "error-code" not in trailing


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)])
def test_a_call_without_a_valid_token_is_unauthenticated(
    stub: Blip2ServiceStub, metadata: tuple[tuple[str, str], ...]
) -> None:
    status, _, trailing = error_of(lambda: stub.Models(pb.ModelsRequest(), metadata=metadata))
    assert (status, trailing["error-code"]) == (grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
    stream = stub.GenerateStream(pb.GenerateRequest(prompt="a", image=image(0)), metadata=metadata)
    status, _, _ = error_of(lambda: list(stream))
    assert status == grpc.StatusCode.UNAUTHENTICATED


def test_the_client_raises_the_services_typed_errors(url: str, grpc_target: str) -> None:
    with (
        Blip2GrpcClient(grpc_target, token="wrong") as anonymous,
        pytest.raises(AuthenticationError),
    ):
        anonymous.models()
    with Blip2GrpcClient(grpc_target, token=TOKEN) as authorized:
        with pytest.raises(InvalidImageError, match="image"):
            authorized.vqa(b"GIF89a broken", "q")
        with pytest.raises(InvalidImageError):
            list(authorized.generate_stream(b"GIF89a broken", "q"))


def test_reflection_lists_the_service(url: str, grpc_target: str) -> None:
    with grpc.insecure_channel(grpc_target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "blip2.v1.Blip2Service" in services


def test_an_anonymous_ingress_refuses_to_start_with_the_grpc_proxy_on(url: str) -> None:
    """HTTP listens on loopback only, but the gRPC proxy listens on every address."""
    args = {
        "model_deployment": {"num_gpus": 1, "num_cpus": 0},
        "ingress_deployment": {"num_cpus": 0},
    }
    config = AppConfig.model_validate(args)
    with pytest.raises(RuntimeError, match="failed"):
        serve.run(build_application(config, slow_fake_model), name="anonymous", route_prefix="/a")
    message = str(serve.status().applications["anonymous"].deployments["Blip2Ingress"].message)
    assert "gRPC proxy listens on port" in message
    serve.delete("anonymous")
