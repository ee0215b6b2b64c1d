"""Every endpoint and every image form over HTTP, errors, and the handle API from a Ray task.

The app is deployed from ``serve_config.cpu.yaml`` the way ``serve run`` deploys it; answers
are checked against the same tiny BLIP-2 loaded in the test process.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import ray
import requests
from ray import serve

from serve_app.config import ModelConfig
from serve_app.contract.api import GenerationParams, ImageSource, VQARequest
from serve_app.model.blip2 import Blip2Model
from serve_app.model.types import ModelRequest, Task
from tests.support.http_server import StaticServer, static_server
from tests.support.images import image_bytes, make_image
from tests.support.serving import deploy_config, fit_for_tests, load_config

MAX_BODY_BYTES = 2_000_000


@pytest.fixture(scope="module")
def images() -> Iterator[StaticServer]:
    routes = {f"/{i}.png": ("image/png", image_bytes(i)) for i in range(4)}
    routes["/page.html"] = ("text/html", b"<html></html>")
    with static_server(routes) as server:
        yield server


@pytest.fixture(scope="module")
def app_config() -> dict[str, Any]:
    config = fit_for_tests(load_config())
    args = config["applications"][0]["args"]
    args["limits"].update(allow_private_urls=True, max_body_bytes=MAX_BODY_BYTES)
    return config


@pytest.fixture(scope="module")
def url(serve_url: str, app_config: dict[str, Any]) -> str:
    deploy_config(app_config)
    return serve_url


@pytest.fixture(scope="module")
def reference(url: str, app_config: dict[str, Any]) -> Blip2Model:
    """The same model in-process: what the service must answer."""
    return Blip2Model.load(ModelConfig(**app_config["applications"][0]["args"]["model"]))


def expected(model: Blip2Model, index: int, task: Task, text: str = "", **params: Any) -> str:
    request = ModelRequest(
        task=task,
        text=text,
        image=np.asarray(make_image(index)),
        params=GenerationParams(**params),
    )
    result = model.generate([request])[0]
    assert not isinstance(result, Exception)
    return result.text


def data_uri(index: int) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(index)).decode()


def test_vqa_with_every_image_form(url: str, images: StaticServer, reference: Blip2Model) -> None:
    question = "what color is the square?"
    answer = expected(reference, 1, "vqa", question)
    plain = base64.b64encode(image_bytes(1)).decode()
    bodies = [
        {"image": {"data": data_uri(1)}},
        {"image": {"data": plain}},
        {"image": {"url": f"{images.base_url}/1.png"}},
    ]
    for body in bodies:
        response = requests.post(f"{url}/v1/vqa", json={**body, "question": question}, timeout=60)
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["answer"] == answer
        assert payload["model"] == "builtin:shapes-blip2"
        usage = payload["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["prompt_tokens"] > 0
    upload = requests.post(
        f"{url}/v1/vqa",
        files={"image": ("x.png", image_bytes(1), "image/png")},
        data={"question": question},
        timeout=60,
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["answer"] == answer
    assert images.hits["/1.png"] == 1


def test_caption_with_and_without_prefix(url: str, reference: Blip2Model) -> None:
    plain = requests.post(f"{url}/v1/caption", json={"image": {"data": data_uri(2)}}, timeout=60)
    assert plain.status_code == 200, plain.text
    assert plain.json()["caption"] == expected(reference, 2, "caption")

    prefixed = requests.post(
        f"{url}/v1/caption",
        files={"image": ("x.png", image_bytes(2), "image/png")},
        data={"prompt": "a photo of", "max_new_tokens": "5"},
        timeout=60,
    )
    assert prefixed.status_code == 200, prefixed.text
    caption = prefixed.json()["caption"]
    assert caption == expected(reference, 2, "caption", "a photo of", max_new_tokens=5)
    assert caption.startswith("a photo of")
    assert prefixed.json()["usage"]["completion_tokens"] <= 5


def test_raw_prompt(url: str, reference: Blip2Model) -> None:
    body = {
        "image": {"data": data_uri(3)},
        "prompt": "this picture shows",
        "params": {"num_beams": 2},
    }
    response = requests.post(f"{url}/v1/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == expected(
        reference, 3, "prompt", "this picture shows", num_beams=2
    )


def test_models_route_describes_the_loaded_models(url: str) -> None:
    response = requests.get(f"{url}/v1/models", timeout=30)
    assert response.status_code == 200
    card, retrieval = response.json()["data"]
    assert (retrieval["id"], retrieval["task"]) == ("builtin:shapes-blip2-itm", "retrieval")
    assert card["id"] == "builtin:shapes-blip2"
    assert (card["family"], card["dtype"], card["device"]) == ("opt", "float32", "cpu")
    assert card["max_batch_size"] == 16
    assert card["limits"]["max_body_bytes"] == MAX_BODY_BYTES
    assert card["limits"]["max_new_tokens_limit"] == 64


def test_health_routes(url: str) -> None:
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{url}/readyz", timeout=10).json() == {"status": "ok"}


def test_openapi_documents_the_typed_bodies(url: str) -> None:
    document = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/v1/vqa", "/v1/caption", "/v1/generate", "/v1/models", "/healthz"} <= set(
        document["paths"]
    )
    body = document["paths"]["/v1/vqa"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"].endswith("/VQARequest")
    assert "image" in body["multipart/form-data"]["schema"]["properties"]
    schemas = document["components"]["schemas"]
    assert {"VQARequest", "ImageSource", "GenerationParams", "VQAResponse", "ErrorResponse"} <= set(
        schemas
    )
    assert "422" in document["paths"]["/v1/vqa"]["post"]["responses"]


GOOD = {"image": {"data": base64.b64encode(image_bytes(0)).decode()}, "question": "why?"}

ERROR_CASES: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    (
        "bad base64",
        {**GOOD, "image": {"data": "not base64!!"}},
        400,
        "invalid_base64",
        "image.data",
    ),
    (
        "not an image",
        {**GOOD, "image": {"data": base64.b64encode(b"hello world").decode()}},
        400,
        "invalid_image",
        "image.data",
    ),
    ("unknown field", {**GOOD, "colour": "red"}, 422, "invalid_request", "colour"),
    ("missing question", {"image": GOOD["image"]}, 422, "invalid_request", "question"),
    ("empty question", {**GOOD, "question": ""}, 422, "invalid_request", "question"),
    (
        "url and data",
        {**GOOD, "image": {"data": "x", "url": "http://a"}},
        422,
        "invalid_request",
        "image",
    ),
    (
        "max_new_tokens over cap",
        {**GOOD, "params": {"max_new_tokens": 65}},
        422,
        "invalid_request",
        "params.max_new_tokens",
    ),
    (
        "num_beams over cap",
        {**GOOD, "params": {"num_beams": 9}},
        422,
        "invalid_request",
        "params.num_beams",
    ),
    (
        "negative temperature",
        {**GOOD, "params": {"temperature": -1}},
        422,
        "invalid_request",
        "params.temperature",
    ),
    ("question too long", {**GOOD, "question": "x" * 2001}, 422, "invalid_request", "question"),
    (
        "ftp url",
        {**GOOD, "image": {"url": "ftp://127.0.0.1/x.png"}},
        400,
        "image_fetch_failed",
        "image.url",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_bad_json_requests_get_typed_errors(
    url: str, body: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    response = requests.post(f"{url}/v1/vqa", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["param"] == param


def test_bad_bodies_get_typed_errors(url: str, images: StaticServer) -> None:
    cases = [
        (
            requests.post(
                f"{url}/v1/vqa", data=b"{not json", headers={"content-type": "application/json"}
            ),
            400,
            "malformed_body",
        ),
        (
            requests.post(
                f"{url}/v1/vqa", data=b"question=x", headers={"content-type": "text/plain"}
            ),
            415,
            "unsupported_media_type",
        ),
        (
            requests.post(
                f"{url}/v1/vqa",
                data=b"x" * (MAX_BODY_BYTES + 1),
                headers={"content-type": "application/json"},
            ),
            413,
            "payload_too_large",
        ),
        (
            requests.post(f"{url}/v1/vqa", data={"question": "q"}, files={"other": ("a", b"b")}),
            422,
            "invalid_request",
        ),
        (
            requests.post(
                f"{url}/v1/vqa", json={**GOOD, "image": {"url": f"{images.base_url}/page.html"}}
            ),
            415,
            "unsupported_media_type",
        ),
        (
            requests.post(
                f"{url}/v1/vqa", json={**GOOD, "image": {"url": f"{images.base_url}/missing.png"}}
            ),
            400,
            "image_fetch_failed",
        ),
        (requests.get(f"{url}/v1/nowhere"), 404, "not_found"),
        (requests.get(f"{url}/v1/vqa"), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code, response.text


@ray.remote(num_cpus=0)
def ask_through_handle(data: str, question: str) -> dict[str, Any]:
    """A Ray task calling the running app the way a Ray job does."""
    handle = serve.get_app_handle("blip2")
    response = handle.vqa.remote(VQARequest(image=ImageSource(data=data), question=question))
    return response.result().model_dump()


@ray.remote(num_cpus=0)
def ask_with_bad_image_through_handle() -> str:
    from serve_app.contract.errors import InvalidBase64Error

    handle = serve.get_app_handle("blip2")
    try:
        handle.vqa.remote(VQARequest(image=ImageSource(data="@@@"), question="q")).result()
    except InvalidBase64Error as exc:
        return exc.code
    return "no error"


def test_handle_api_from_a_ray_task(url: str, reference: Blip2Model) -> None:
    answer = ray.get(ask_through_handle.remote(data_uri(0), "is it red?"), timeout=60)
    assert answer["answer"] == expected(reference, 0, "vqa", "is it red?")
    assert ray.get(ask_with_bad_image_through_handle.remote(), timeout=60) == "invalid_base64"


def test_limits_are_checked_before_the_image_is_fetched(url: str, images: StaticServer) -> None:
    body = {
        "image": {"url": f"{images.base_url}/3.png"},
        "question": "q",
        "params": {"max_new_tokens": 1000},
    }
    response = requests.post(f"{url}/v1/vqa", json=body, timeout=30)
    assert response.status_code == 422
    assert images.hits["/3.png"] == 0
